"""Image files: modes and bit depths read as stored, conversions reported, broken files named."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image as PILImage

from restorejax.data import images


def _save(path, array):
  PILImage.fromarray(array).save(path)
  return str(path)


def test_rgb_grey_rgba_and_16bit_read_as_stored(tmp_path):
  rng = np.random.default_rng(0)
  rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
  assert np.array_equal(images.read(_save(tmp_path / "a.png", rgb)).pixels, rgb)
  grey = images.read(_save(tmp_path / "g.png", rgb[..., 0]))
  assert grey.mode == "L" and grey.pixels.shape == (5, 7, 1)
  rgba = images.read(_save(tmp_path / "r.png", np.dstack([rgb, rgb[..., :1]])))
  assert rgba.mode == "RGBA" and rgba.pixels.shape == (5, 7, 4)
  g16 = rng.integers(0, 65536, (5, 7), dtype=np.uint16)
  im16 = images.read(_save(tmp_path / "g16.png", g16))
  assert im16.bits == 16 and np.array_equal(im16.pixels[..., 0], g16)


def test_16bit_colour_png_round_trips(tmp_path):
  px = np.random.default_rng(1).integers(0, 65536, (4, 6, 3), dtype=np.uint16)
  path = tmp_path / "c16.png"
  images.write_png(str(path), px)
  im = images.read(str(path))
  assert im.bits == 16 and im.mode == "RGB" and np.array_equal(im.pixels, px)


def test_to_rgb8_reports_conversions():
  px16 = np.full((2, 2, 1), 65535, np.uint16)
  rgb, notes = images.to_rgb8(images.Image(px16, 16, "L"))
  assert rgb.shape == (2, 2, 3) and rgb.dtype == np.uint8 and (rgb == 255).all()
  assert notes == ["16-bit -> 8-bit", "greyscale -> RGB"]
  rgb, notes = images.to_rgb8(images.Image(np.zeros((2, 2, 4), np.uint8), 8, "RGBA"))
  assert rgb.shape == (2, 2, 3) and notes == ["alpha channel dropped"]
  assert images.to_rgb8(images.Image(np.zeros((2, 2, 3), np.uint8), 8, "RGB"))[1] == []


@pytest.mark.parametrize("content, reason", [
    (b"", "empty file"),
    (b"this is text, not a picture", "not an image"),
])
def test_broken_files_are_named(tmp_path, content, reason):
  path = tmp_path / "bad.png"
  path.write_bytes(content)
  with pytest.raises(images.ImageError, match=reason) as e:
    images.read(str(path))
  assert str(path) in str(e.value)


def test_truncated_png_is_named(tmp_path):
  path = _save(tmp_path / "t.png", np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
  data = open(path, "rb").read()
  open(path, "wb").write(data[: len(data) // 2])
  with pytest.raises(images.ImageError, match="truncated"):
    images.read(path)


def test_png_encoding_is_deterministic():
  px = np.random.default_rng(2).integers(0, 256, (8, 8, 3), dtype=np.uint8)
  assert images.encode_png(px) == images.encode_png(px.copy())
  assert np.array_equal(images.decode_png(images.encode_png(px)), px)


def bomb_png(width=30000, height=30000, bit_depth=1, colour_type=0):
  """A PNG of a few dozen bytes whose header claims width x height pixels (a decompression bomb)."""
  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
  ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4096))
          + chunk(b"IEND", b""))


@pytest.mark.parametrize("bit_depth, colour_type", [(1, 0), (8, 2), (16, 2)])  # 16-bit: not Pillow's path
def test_decompression_bomb_is_an_image_error(tmp_path, bit_depth, colour_type):
  path = tmp_path / "bomb.png"
  path.write_bytes(bomb_png(bit_depth=bit_depth, colour_type=colour_type))
  with pytest.raises(images.ImageError, match="30000x30000 pixels, more than the limit") as e:
    images.read(str(path))
  assert e.value.path == str(path)


def test_exif_orientation_is_applied(tmp_path):
  """A phone photo stored sideways with orientation 6 ('rotate 90 clockwise to view') reads upright."""
  stored = np.zeros((20, 40, 3), np.uint8)
  stored[:, :20] = 255  # white left half as stored -> white top half when turned clockwise
  exif = PILImage.Exif()
  exif[0x0112] = 6
  path = tmp_path / "phone.jpg"
  PILImage.fromarray(stored).save(path, exif=exif, quality=95)
  im = images.read(str(path))
  assert im.pixels.shape == (40, 20, 3)
  assert im.pixels[:20].mean() > 240 and im.pixels[20:].mean() < 15
  # written back without EXIF: read again, it is not turned a second time
  images.write_png(str(tmp_path / "out.png"), im.pixels)
  assert np.array_equal(images.read(str(tmp_path / "out.png")).pixels, im.pixels)


def test_animated_images_are_refused_by_name(tmp_path):
  frames = [PILImage.fromarray(np.full((8, 8, 3), v, np.uint8)) for v in (0, 128, 255)]
  path = tmp_path / "anim.gif"
  frames[0].save(path, save_all=True, append_images=frames[1:], duration=50, loop=0)
  with pytest.raises(images.ImageError, match=r"animated or multi-page image \(3 frames\)"):
    images.read(str(path))
  frames[0].save(tmp_path / "still.gif")
  assert images.read(str(tmp_path / "still.gif")).pixels.shape == (8, 8, 3)
