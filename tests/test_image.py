"""image_io: every PIL mode and array layout to (H, W, 3) RGB, EXIF orientation, unreadable files, network input."""
import io

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from minimaskrcnn.image import ImageReadError, read_image, to_network_input

import oracle
from conftest import IMAGES


def _pattern(h=24, w=40):
    """An (h, w, 3) uint8 image whose every pixel differs and which no rotation or flip maps onto itself."""
    y, x = np.mgrid[:h, :w]
    return np.stack([x * 6 % 256, y * 10 % 256, (x + 3 * y) % 256], axis=2).astype(np.uint8)


def _save(tmp_path, name, img, **kw):
    path = tmp_path / name
    img.save(path, **kw)
    return path


def _check_rgb(a, h, w, dtype=np.uint8):
    assert a.shape == (h, w, 3) and a.dtype == dtype and a.flags.c_contiguous


# --- files by mode ----------------------------------------------------------------------------------------------------

def test_rgb_png_round_trip(tmp_path):
    a = _pattern()
    out = read_image(_save(tmp_path, "rgb.png", Image.fromarray(a)))
    _check_rgb(out, 24, 40)
    np.testing.assert_array_equal(out, a)


def test_greyscale_l_is_replicated(tmp_path):
    g = _pattern()[:, :, 0]
    out = read_image(_save(tmp_path, "l.png", Image.fromarray(g)))
    _check_rgb(out, 24, 40)
    np.testing.assert_array_equal(out, np.stack([g, g, g], axis=2))


def test_one_bit_becomes_0_and_255(tmp_path):
    bits = _pattern()[:, :, 0] > 100
    out = read_image(_save(tmp_path, "b.png", Image.fromarray(bits)))
    np.testing.assert_array_equal(out[:, :, 1], np.where(bits, 255, 0))
    assert set(np.unique(out)) <= {0, 255}


def test_16bit_png_scaled_by_257(tmp_path):
    v = np.array([[0, 128, 129, 257, 385, 386, 32896, 65278, 65535]], dtype=np.uint16)
    img = Image.fromarray(v)
    assert img.mode == "I;16"
    out = read_image(_save(tmp_path, "g16.png", img))
    np.testing.assert_array_equal(out[0, :, 2], [0, 0, 1, 1, 1, 2, 128, 254, 255])


@given(st.integers(0, 65535))
def test_16bit_rule_is_round_v_over_257(v):
    out = read_image(np.full((1, 1), v, dtype=np.uint16))
    assert out[0, 0, 0] == round(v / 257)


def test_32bit_integer_modes(tmp_path):
    small = read_image(_save(tmp_path, "i8.tif", Image.fromarray(np.array([[0, 7, 255]], np.int32))))
    np.testing.assert_array_equal(small[0, :, 0], [0, 7, 255])
    wide = read_image(_save(tmp_path, "i16.tif", Image.fromarray(np.array([[0, 257, 65535]], np.int32))))
    np.testing.assert_array_equal(wide[0, :, 0], [0, 1, 255])
    stretched = read_image(_save(tmp_path, "i32.tif", Image.fromarray(np.array([[-100, 55, 155]], np.int32))))
    np.testing.assert_array_equal(stretched[0, :, 0], [0, 155, 255])


def test_float_mode(tmp_path):
    unit = read_image(_save(tmp_path, "f.tif", Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))))
    np.testing.assert_array_equal(unit[0, :, 0], [0, 128, 255])
    wide = read_image(_save(tmp_path, "fw.tif", Image.fromarray(np.array([[-1.0, 1.0, 3.0]], np.float32))))
    np.testing.assert_array_equal(wide[0, :, 0], [0, 128, 255])
    with pytest.raises(ImageReadError, match="NaN"):
        read_image(_save(tmp_path, "fn.tif", Image.fromarray(np.array([[0.0, np.nan]], np.float32))))


def test_rgba_composited_over_white(tmp_path):
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 128]]], dtype=np.uint8)
    out = read_image(_save(tmp_path, "rgba.png", Image.fromarray(rgba)))
    expected_half = [round((c * 128 + 255 * 127) / 255) for c in (200, 100, 0)]
    np.testing.assert_array_equal(out[0], [[10, 20, 30], [255, 255, 255], expected_half])


def test_opaque_rgba_equals_dropping_alpha(tmp_path):
    a = _pattern()
    rgba = np.dstack([a, np.full(a.shape[:2], 255, np.uint8)])
    np.testing.assert_array_equal(read_image(_save(tmp_path, "o.png", Image.fromarray(rgba))), a)


def test_la_composited_over_white(tmp_path):
    la = Image.fromarray(np.array([[[40, 255], [40, 0], [0, 51]]], dtype=np.uint8), mode="LA")
    out = read_image(_save(tmp_path, "la.png", la))
    np.testing.assert_array_equal(out[0, :, 0], [40, 255, 204])
    assert (out[0] == out[0, :, :1]).all()


def test_palette_with_and_without_transparency(tmp_path):
    a = _pattern()
    p = Image.fromarray(a).quantize(colors=16)
    out = read_image(_save(tmp_path, "p.png", p))
    np.testing.assert_array_equal(out, np.asarray(p.convert("RGB")))
    p.info["transparency"] = 0
    out_t = read_image(_save(tmp_path, "pt.png", p, transparency=0))
    idx = np.asarray(p)
    assert (out_t[idx == 0] == 255).all() and idx.min() == 0
    np.testing.assert_array_equal(out_t[idx != 0], out[idx != 0])


def test_cmyk_uses_pillow_conversion(tmp_path):
    cmyk = Image.fromarray(_pattern()).convert("CMYK")
    path = _save(tmp_path, "c.tif", cmyk)
    np.testing.assert_array_equal(read_image(path), np.asarray(Image.open(path).convert("RGB")))


@pytest.mark.parametrize("orientation, k", [(6, -1), (8, 1), (3, 2)])
def test_exif_orientation_applied(tmp_path, orientation, k):
    img = Image.fromarray(_pattern(32, 48))
    plain = read_image(_save(tmp_path, "plain.jpg", img, quality=95))
    exif = Image.Exif()
    exif[0x0112] = orientation
    rotated = read_image(_save(tmp_path, f"o{orientation}.jpg", img, quality=95, exif=exif.tobytes()))
    np.testing.assert_array_equal(rotated, np.rot90(plain, k))    # same JPEG pixels, shown rotated


def test_exif_orientation_applied_to_pil_images(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6
    path = _save(tmp_path, "o.png", Image.fromarray(_pattern()), exif=exif.tobytes())
    np.testing.assert_array_equal(read_image(Image.open(path)), np.rot90(_pattern(), -1))


def test_file_object_and_pathlike(tmp_path):
    path = _save(tmp_path, "x.png", Image.fromarray(_pattern()))
    np.testing.assert_array_equal(read_image(io.BytesIO(path.read_bytes())), _pattern())
    np.testing.assert_array_equal(read_image(str(path)), _pattern())


def test_shared_greyscale_photo_is_rgb():
    out = read_image(IMAGES / "camera.png")
    _check_rgb(out, 512, 512)
    assert (out[:, :, 0] == out[:, :, 2]).all()


# --- unreadable files ---------------------------------------------------------------------------------------------------

def _one_line_error(path, match):
    with pytest.raises(ImageReadError, match=match) as e:
        read_image(path)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path) + ": ")
    assert isinstance(e.value, ValueError) and e.value.path == str(path)
    return msg


def test_truncated_jpeg(tmp_path):
    full = _save(tmp_path, "full.jpg", Image.fromarray(_pattern(200, 300)), quality=95)
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(full.read_bytes()[:len(full.read_bytes()) // 2])
    _one_line_error(cut, "truncated")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("this is not an image\n" * 5)
    _one_line_error(path, "not an image")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    _one_line_error(path, "empty file")


def test_missing_file_and_directory(tmp_path):
    _one_line_error(tmp_path / "missing.png", "no such file")
    _one_line_error(tmp_path, "directory")


def test_corrupt_png_data(tmp_path):
    good = _save(tmp_path, "g.png", Image.fromarray(_pattern(64, 64)))
    data = bytearray(good.read_bytes())
    data[60:120] = bytes(60)                                          # zero part of the compressed IDAT stream
    bad = tmp_path / "bad.png"
    bad.write_bytes(bytes(data))
    _one_line_error(bad, "cannot decode")


# --- arrays -------------------------------------------------------------------------------------------------------------

def test_uint8_rgb_array_passes_through():
    a = _pattern()
    out = read_image(a)
    np.testing.assert_array_equal(out, a)
    assert out.dtype == np.uint8


@pytest.mark.parametrize("shape", [(24, 40), (24, 40, 1)])
def test_greyscale_arrays(shape):
    g = _pattern()[:, :, 0]
    out = read_image(g.reshape(shape))
    np.testing.assert_array_equal(out, np.stack([g, g, g], axis=2))


def test_rgba_array_composited_like_files():
    rgba = np.array([[[10, 20, 30, 255], [10, 20, 30, 0], [200, 100, 0, 128]]], dtype=np.uint8)
    out = read_image(rgba)
    assert out[0, 1].tolist() == [255, 255, 255] and out[0, 0].tolist() == [10, 20, 30]
    f = read_image(rgba.astype(np.float32) / 255)
    np.testing.assert_allclose(f[0, 2], (rgba[0, 2, :3] / 255) * (128 / 255) + (1 - 128 / 255), rtol=1e-6)


def test_float_arrays_stay_float():
    a = np.random.default_rng(0).random((8, 9, 3))
    out = read_image(a)
    _check_rgb(out, 8, 9, np.float32)
    np.testing.assert_array_equal(out, a.astype(np.float32))


@pytest.mark.parametrize("bad, match", [
    (np.full((4, 4, 3), 1.5), r"\[0, 1\]"),
    (np.full((4, 4, 3), -0.1), r"\[0, 1\]"),
    (np.full((4, 4, 3), np.nan), "NaN"),
    (np.zeros((3, 32, 48), np.uint8), "channels first"),
    (np.zeros((4, 4, 2), np.uint8), "expected an"),
    (np.zeros((0, 4, 3), np.uint8), "empty"),
    (np.full((4, 4), 300, np.int64), "outside 0..255"),
    (np.zeros((4, 4), bool), "dtype bool"),
])
def test_bad_arrays(bad, match):
    with pytest.raises(ValueError, match=match):
        read_image(bad)


def test_integer_arrays_in_range_accepted():
    np.testing.assert_array_equal(read_image(np.full((2, 2, 3), 200, np.int64)), np.full((2, 2, 3), 200, np.uint8))


def test_pil_image_input():
    img = Image.fromarray(_pattern()).convert("L")
    np.testing.assert_array_equal(read_image(img)[:, :, 1], np.asarray(img))


def test_unsupported_type():
    with pytest.raises(ValueError, match="expected a file path"):
        read_image(12)


# --- network input ------------------------------------------------------------------------------------------------------

def test_to_network_input_equals_torchvision_to_tensor():
    tv = oracle.torchvision()
    from torchvision.transforms.functional import to_tensor
    a = read_image(IMAGES / "grace_hopper.jpg")
    ours = to_network_input(IMAGES / "grace_hopper.jpg")
    theirs = to_tensor(Image.fromarray(a)).numpy()
    assert ours.dtype == np.float32 and ours.shape == (3,) + a.shape[:2]
    np.testing.assert_array_equal(ours, theirs)                       # bitwise: uint8 / 255 in float32
    assert tv is not None


def test_to_network_input_float_passthrough():
    a = np.random.default_rng(1).random((5, 6, 3)).astype(np.float32)
    np.testing.assert_array_equal(to_network_input(a), a.transpose(2, 0, 1))
