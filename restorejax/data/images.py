"""Image files in and out: every format Pillow reads, 8- and 16-bit, grey / RGB / with alpha.

`read` returns the pixels as they are in the file (uint8 or uint16, 1..4 channels), turned upright by the
file's EXIF orientation (a phone photo reads the way a viewer shows it; PNGs written here carry no EXIF, so
the orientation is applied once), and raises `ImageError` naming the file and the reason (empty,
truncated, not an image, unsupported mode, animated or multi-page, more than `MAX_PIXELS` pixels: a
decompression bomb, e.g. a few hundred bytes claiming 30000x30000).
`to_rgb8` converts for training and says what it changed; `write_png` writes deterministic PNGs
(same pixels -> same bytes) in 8 or 16 bits, `replace_png` the same atomically (the commands' outputs).
16-bit colour PNGs, which Pillow reduces to 8 bits, are decoded and encoded with TensorFlow's PNG codec
(outside any training hot path).
"""

import dataclasses
import io
import os
import struct
import zlib

import numpy as np
from PIL import Image as PILImage
from PIL import ImageOps

EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
# Pillow's own hard limit (twice its warning threshold): larger claims are refused before decoding.
MAX_PIXELS = 2 * PILImage.MAX_IMAGE_PIXELS


class ImageError(ValueError):
  """A file that cannot be used as an image; str() is `<path>: <reason>`."""

  def __init__(self, path: str, reason: str):
    super().__init__(f"{path}: {reason}")
    self.path = path
    self.reason = reason


@dataclasses.dataclass
class Image:
  pixels: np.ndarray      # (H, W, C), C in 1..4, uint8 or uint16
  bits: int               # 8 or 16
  mode: str               # 'L', 'LA', 'RGB' or 'RGBA'

  @property
  def size(self) -> tuple[int, int]:
    return self.pixels.shape[0], self.pixels.shape[1]


def files_in(paths: list[str]) -> list[str]:
  """Files named, and the image files directly in folders named, in order (folders sorted); a folder
  without image files is a ValueError naming it. A missing or unreadable file is reported when read."""
  out = []
  for p in paths:
    if os.path.isdir(p):
      found = sorted(os.path.join(p, f) for f in os.listdir(p)
                     if os.path.splitext(f)[1].lower() in EXTENSIONS and os.path.isfile(os.path.join(p, f)))
      if not found:
        raise ValueError(f"{p}: a folder without image files ({', '.join(EXTENSIONS)})")
      out += found
    else:
      out.append(p)
  return out


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
  """(bit depth, colour type, width, height) of a PNG, or None for other formats."""
  if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26:
    return None
  width, height = struct.unpack(">II", data[16:24])
  return data[24], data[25], width, height


def _too_many_pixels(path: str, width: int, height: int) -> ImageError:
  return ImageError(path, f"claims {width}x{height} pixels, more than the limit of {MAX_PIXELS:,} "
                          "(a decompression bomb or a corrupt header)")


def _read_png16_colour(path: str, data: bytes) -> Image:
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    pixels = tf.io.decode_png(data, channels=0, dtype=tf.uint16).numpy()
  except Exception as e:  # pylint: disable=broad-except
    raise ImageError(path, f"unreadable 16-bit PNG ({' '.join(str(e).split())[:120]})") from None
  return Image(pixels, 16, {1: "L", 2: "LA", 3: "RGB", 4: "RGBA"}[pixels.shape[-1]])


def read(path: str) -> Image:
  """The image in `path` as stored (see module docstring); ImageError when it cannot be used."""
  try:
    with open(path, "rb") as f:
      data = f.read()
  except OSError as e:
    raise ImageError(path, f"cannot be read ({e.strerror})") from None
  if not data:
    raise ImageError(path, "empty file (0 bytes)")
  header = _png_header(data)
  if header and header[2] * header[3] > MAX_PIXELS:
    raise _too_many_pixels(path, header[2], header[3])
  if header and header[0] == 16 and header[1] in (2, 4, 6):  # 16-bit RGB / grey+alpha / RGBA
    return _read_png16_colour(path, data)
  try:
    im = PILImage.open(io.BytesIO(data))
    if im.size[0] * im.size[1] > MAX_PIXELS:
      raise _too_many_pixels(path, *im.size)
    frames = getattr(im, "n_frames", 1)
    if frames > 1 and im.format != "MPO":  # MPO: a phone JPEG whose first picture is the photo
      raise ImageError(path, f"animated or multi-page image ({frames} frames): only still images are "
                             "supported (extract the frame you want first)")
    im.load()
    im = ImageOps.exif_transpose(im)
  except ImageError:
    raise
  except PILImage.DecompressionBombError as e:
    raise ImageError(path, f"refused as a decompression bomb ({e})") from None
  except PILImage.UnidentifiedImageError:
    raise ImageError(path, "not an image file Pillow can read") from None
  except (OSError, SyntaxError, ValueError, zlib.error, struct.error) as e:
    reason = str(e)
    if "truncated" in reason or "broken" in reason or isinstance(e, (zlib.error, struct.error)):
      raise ImageError(path, f"truncated or corrupt image data ({reason})") from None
    raise ImageError(path, f"unreadable image ({reason})") from None
  if im.mode in ("I;16", "I;16L", "I;16B", "I;16N"):
    return Image(np.asarray(im, np.uint16)[..., None], 16, "L")
  if im.mode == "I":
    a = np.asarray(im)
    if a.min() < 0 or a.max() > 65535:
      raise ImageError(path, "32-bit integer pixels outside 0..65535 are not supported")
    return Image(a.astype(np.uint16)[..., None], 16, "L")
  if im.mode == "F":
    raise ImageError(path, "floating-point images are not supported")
  if im.mode in ("1", "L"):
    return Image(np.asarray(im.convert("L"), np.uint8)[..., None], 8, "L")
  if im.mode == "LA":
    return Image(np.asarray(im, np.uint8), 8, "LA")
  if im.mode == "P":
    im = im.convert("RGBA" if "transparency" in im.info else "RGB")
  elif im.mode in ("PA", "RGBa", "La"):
    im = im.convert("RGBA")
  elif im.mode not in ("RGB", "RGBA"):
    im = im.convert("RGB")  # CMYK, YCbCr, LAB, HSV
  return Image(np.asarray(im, np.uint8), 8, im.mode)


def to_rgb8(image: Image) -> tuple[np.ndarray, list[str]]:
  """RGB uint8 pixels for training, and a note for each conversion made (empty when none)."""
  px, notes = image.pixels, []
  if image.bits == 16:
    px = ((px.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    notes.append("16-bit -> 8-bit")
  if image.mode in ("L", "LA"):
    notes.append("greyscale -> RGB")
  if image.mode in ("LA", "RGBA"):
    notes.append("alpha channel dropped")
    px = px[..., :-1]
  if px.shape[-1] == 1:
    px = np.repeat(px, 3, axis=-1)
  return np.ascontiguousarray(px), notes


def encode_png(pixels: np.ndarray) -> bytes:
  """Deterministic PNG bytes (no metadata) of uint8 or uint16 (H, W, C) pixels, C in 1..4."""
  if pixels.ndim == 2:
    pixels = pixels[..., None]
  c = pixels.shape[-1]
  if pixels.dtype == np.uint16 and c != 1:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.io.encode_png(pixels, compression=6).numpy()
  if pixels.dtype in (np.uint8, np.uint16):  # Pillow infers L / I;16 / LA / RGB / RGBA
    im = PILImage.fromarray(np.ascontiguousarray(pixels[..., 0] if c == 1 else pixels))
  else:
    raise ValueError(f"encode_png: pixels must be uint8 or uint16, got {pixels.dtype}")
  buf = io.BytesIO()
  im.save(buf, format="PNG", compress_level=6)
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """(H, W, C) uint8 pixels of an 8-bit PNG written by `encode_png` (the record format's codec)."""
  im = PILImage.open(io.BytesIO(data))
  a = np.asarray(im)
  return a[..., None] if a.ndim == 2 else a


def write_png(path: str, pixels: np.ndarray) -> None:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "wb") as f:
    f.write(encode_png(pixels))


def replace_png(target: str, pixels: np.ndarray) -> None:
  """`write_png` to a temporary file in `target`'s folder renamed over `target`: an interrupted write
  leaves no half-written PNG, and a link already at `target` is replaced, never written through.
  ImageError (naming `target`) when it cannot be written."""
  tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{os.getpid()}.tmp")
  try:
    write_png(tmp, pixels)
    os.replace(tmp, target)
  except OSError as e:
    if os.path.lexists(tmp):
      os.remove(tmp)
    raise ImageError(target, f"cannot be written ({e.strerror or e})") from None
