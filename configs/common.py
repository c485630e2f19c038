"""The one reader of a config's argument, the text after the colon in `--config=configs/NAME.py:ARG`.

In big_vision's `parse_arg` style: `ARG` is comma-separated; `key=value` sets an option, converted to the
type of its default (bool: true/false/1/0/yes/no; a tuple default: `LO:HI`, colon-separated); a bare word
is a variant if the config has variants, else sets a bool option true (`tiny`), else fills the config's one
positional option (e.g. a dataset directory). Anything else is a one-line error naming the config file.

  args = common.parse_arg(arg, source="configs/default.py", variants=("default", "tiny"), model="nafnet")
  args.variant, args.model
"""

from typing import Any, Optional, Sequence

import ml_collections

_TRUE, _FALSE = ("1", "true", "yes"), ("0", "false", "no")


def _convert(source: str, key: str, value: str, default: Any) -> Any:
  try:
    if isinstance(default, bool):
      if value.lower() not in _TRUE + _FALSE:
        raise ValueError(value)
      return value.lower() in _TRUE
    if isinstance(default, tuple):
      parts = value.split(":")
      kinds = [type(d) for d in default] or [str] * len(parts)
      if len(parts) != len(kinds):
        raise ValueError(value)
      return tuple(kind(p) for kind, p in zip(kinds, parts))
    return type(default)(value) if default is not None else value
  except ValueError:
    want = ":".join(type(d).__name__ for d in default) if isinstance(default, tuple) else type(default).__name__
    raise ValueError(f"{source}: option {key}={value!r} is not a {want}") from None


def parse_arg(arg: Optional[str], *, source: str, variants: Sequence[str] = (),
              positional: Optional[str] = None, **spec: Any) -> ml_collections.ConfigDict:
  """`arg` -> a ConfigDict of `spec`'s options (their defaults unless given) plus `variant` when the config
  has `variants` (the first is the default). `positional` names the option a bare word fills."""
  values = dict(spec)
  if variants:
    values["variant"] = variants[0]
  seen_positional = False
  for item in filter(None, (arg or "").split(",")):
    key, sep, value = item.partition("=")
    if sep:
      if key not in spec:
        raise ValueError(f"{source}: unknown option {key!r} (known: {', '.join(sorted(spec)) or 'none'})")
      values[key] = _convert(source, key, value, spec[key])
    elif item in variants:
      values["variant"] = item
    elif isinstance(spec.get(item), bool):
      values[item] = True
    elif positional and not seen_positional:
      values[positional], seen_positional = item, True
    elif variants:
      raise ValueError(f"{source}: unknown variant {item!r} (known: {', '.join(variants)})")
    else:
      known = [k for k, v in spec.items() if isinstance(v, bool)] + [f"{k}=..." for k in spec
                                                                      if not isinstance(spec[k], bool)]
      raise ValueError(f"{source}: unknown argument {item!r} (known: {', '.join(known) or 'none'})")
  return ml_collections.ConfigDict(values)
