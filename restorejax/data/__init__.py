"""Input data: records, grain pipelines, on-device degradations and priors, embedded default images."""
