"""The operation catalogue: every registered operation, on real images and on odd arrays."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixmill.errors import InvalidPipeline, ProcessingFailed
from pixmill.imaging.ops import FAMILIES, Operation, catalogue, get_operation, operations
from pixmill.imaging.pipeline import Pipeline, Step, parse_pipeline, run_pipeline

OPS = operations()
OP_IDS = [op.name for op in OPS]

# one small file for each layout a decoder hands the pipeline
REAL_IMAGES = [
    "pil_flower.jpg",           # 8-bit colour JPEG, 480×360
    "pil_hopper_gray.jpg",      # 8-bit gray JPEG
    "sk_horse.png",             # 8-bit BGRA PNG
    "pil_mode_16bit.png",       # 16-bit BGRA PNG
    "pil_tiff_16bit_RGB.tiff",  # 16-bit BGR TIFF
    "pil_i_trns.png",           # 16-bit gray PNG
]
LAYOUTS = {"gray": (), "bgr": (3,), "bgra": (4,)}
TINY_SIZES = [(1, 1), (2, 3), (7, 5)]


def step(op: Operation, params: dict | None = None) -> Pipeline:
    """A one-step pipeline, validated like user input."""
    return parse_pipeline([{"op": op.name, "params": params or {}}])


def apply(image: np.ndarray, spec: str) -> np.ndarray:
    """Run a pipeline given as text on an image."""
    return run_pipeline(parse_pipeline(spec), image)[0]


def check_result(op: Operation, image: np.ndarray, out: np.ndarray, params: dict) -> None:
    """Assert the documented dtype, size and channels of an operation's output."""
    assert isinstance(out, np.ndarray) and out.size > 0
    assert out.dtype in (np.uint8, np.uint16)
    keeps_depth = op.depth16 or image.dtype == np.uint8
    assert out.dtype == (image.dtype if keeps_depth else np.uint8)
    height, width = image.shape[:2]
    expected = op.size(height, width, params) if op.size else (height, width)
    assert out.shape[:2] == tuple(expected)
    if image.ndim == 3 and image.shape[2] == 4:
        assert out.ndim == 3 and out.shape[2] == 4, "the alpha channel was lost"
    else:
        assert out.ndim == 2 or out.shape[2] == 3
    assert out.flags.c_contiguous


@pytest.mark.parametrize("name", REAL_IMAGES)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_defaults_on_real_images(op, name, real_image):
    image = real_image(name)
    pipeline = step(op)
    out, notes = run_pipeline(pipeline, image, max_pixels=100_000_000)
    check_result(op, image, out, pipeline.steps[0].kwargs)
    if image.dtype == np.uint16 and not op.depth16:
        assert any("16-bit" in note for note in notes)


def _random_image(rng: np.random.Generator, shape: tuple[int, ...], dtype) -> np.ndarray:
    return rng.integers(0, np.iinfo(dtype).max, size=shape, dtype=dtype, endpoint=True)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16], ids=["8bit", "16bit"])
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_defaults_on_tiny_arrays(op, layout, dtype):
    rng = np.random.default_rng(7)
    pipeline = step(op)
    for size in TINY_SIZES:
        image = _random_image(rng, size + LAYOUTS[layout], dtype)
        try:
            out, _ = run_pipeline(pipeline, image)
        except ProcessingFailed as exc:
            assert exc.message.startswith(f"step 1 {op.name}: ")
            continue
        check_result(op, image, out, pipeline.steps[0].kwargs)


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_random_params_on_small_arrays(op, op_params):
    @settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(params=op_params(op, cap=40), layout=st.sampled_from(list(LAYOUTS)),
           dtype=st.sampled_from([np.uint8, np.uint16]),
           height=st.integers(1, 24), width=st.integers(1, 24), seed=st.integers(0, 2**32 - 1))
    def run(params, layout, dtype, height, width, seed):
        try:
            pipeline = step(op, params)
        except InvalidPipeline:  # a cross-parameter check said no: that is its job
            return
        image = _random_image(np.random.default_rng(seed), (height, width) + LAYOUTS[layout], dtype)
        try:
            out, _ = run_pipeline(pipeline, image, max_pixels=10_000_000)
        except ProcessingFailed as exc:
            assert exc.message.startswith(f"step 1 {op.name}: ")
            return
        check_result(op, image, out, pipeline.steps[0].kwargs)

    run()


ORIGINAL = {
    "edge_detection": lambda img: cv2.Canny(img, 100, 200),
    "color_inversion": cv2.bitwise_not,
    "grayscale": lambda img: cv2.cvtColor(img, cv2.COLOR_BGR2GRAY),
    "blur": lambda img: cv2.GaussianBlur(img, (5, 5), 0),
    "threshold": lambda img: cv2.threshold(cv2.cvtColor(img, cv2.COLOR_BGR2GRAY), 127, 255, cv2.THRESH_BINARY)[1],
    "resize": lambda img: cv2.resize(img, None, fx=0.5, fy=0.5, interpolation=cv2.INTER_LINEAR),
}


@pytest.mark.parametrize("name", ["pil_flower.jpg", "pil_rgb24.bmp", "sk_chelsea.png"])
@pytest.mark.parametrize("op", sorted(ORIGINAL))
def test_original_defaults_equal_opencv(op, name, real_image):
    image = real_image(name, cv2.IMREAD_COLOR)
    assert np.array_equal(apply(image, op), ORIGINAL[op](image))


def test_changed_parameters_of_the_original(real_image):
    image = real_image("pil_flower.jpg", cv2.IMREAD_COLOR)
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    assert np.array_equal(apply(image, "blur(ksize=9)"), cv2.GaussianBlur(image, (9, 9), 0))
    otsu = cv2.threshold(gray, 0, 255, cv2.THRESH_BINARY | cv2.THRESH_OTSU)[1]
    assert np.array_equal(apply(image, "threshold(value=90, mode=otsu)"), otsu)
    assert np.array_equal(apply(image, "threshold(value=90)"), cv2.threshold(gray, 90, 255, cv2.THRESH_BINARY)[1])
    wide = apply(image, "resize(width=800)")
    assert wide.shape == (600, 800, 3)  # 480×360 keeps its 4:3 aspect ratio
    assert np.array_equal(wide, cv2.resize(image, (800, 600), interpolation=cv2.INTER_LINEAR))
    assert apply(image, "resize(height=90)").shape == (90, 120, 3)


@pytest.fixture
def hopper(real_image) -> np.ndarray:
    """A 128×128 colour image."""
    return real_image("pil_hopper.bmp")


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "both"])
def test_flip_twice_is_identity(hopper, direction):
    once = apply(hopper, f"flip(direction={direction})")
    assert not np.array_equal(once, hopper)
    assert np.array_equal(apply(once, f"flip(direction={direction})"), hopper)


def test_flip_matches_numpy(hopper):
    assert np.array_equal(apply(hopper, "flip"), hopper[:, ::-1])
    assert np.array_equal(apply(hopper, "flip(direction=vertical)"), hopper[::-1])
    assert np.array_equal(apply(hopper, "flip(direction=both)"), hopper[::-1, ::-1])


def test_rotate_quarter_turns_are_exact(real_image):
    image = real_image("pil_rgb24.bmp")  # 127×64: not square
    assert np.array_equal(apply(image, "rotate(angle=90)"), np.rot90(image, 1))
    assert np.array_equal(apply(image, "rotate(angle=-90)"), np.rot90(image, -1))
    assert np.array_equal(apply(image, "rotate(angle=180)"), np.rot90(image, 2))
    assert np.array_equal(apply(image, "rotate(angle=0)"), image)
    assert np.array_equal(apply(image, " | ".join(["rotate(angle=90)"] * 4)), image)


def test_rotate_any_angle(hopper):
    tilted = apply(hopper, "rotate(angle=30)")
    assert tilted.shape == (175, 175, 3)  # 128·(cos 30° + sin 30°) = 174.9
    assert apply(hopper, "rotate(angle=30, expand=false)").shape == hopper.shape
    # the general path turns the same way as the exact quarter turns
    nearly = apply(hopper, "rotate(angle=89.9)").astype(int)
    assert np.abs(nearly[8:-8, 8:-8] - np.rot90(hopper)[8:-8, 8:-8]).mean() < 2


def test_crop_is_the_exact_slice(hopper):
    assert np.array_equal(apply(hopper, "crop(x=10, y=20, width=30, height=40)"), hopper[20:60, 10:40])
    assert np.array_equal(apply(hopper, "crop(x=100, y=120)"), hopper[120:, 100:])
    assert np.array_equal(apply(hopper, "crop(x=100, y=0, width=500, height=5)"), hopper[:5, 100:])


def test_crop_outside_the_image_says_so(hopper):
    with pytest.raises(ProcessingFailed, match=r"step 1 crop: .*outside the 128×128 image"):
        apply(hopper, "crop(x=128, y=0)")


def test_thumbnail_fits_and_never_enlarges(real_image):
    image = real_image("pil_flower.jpg")  # 480×360
    small = apply(image, "thumbnail(width=100, height=100)")
    assert small.shape == (75, 100, 3)
    assert np.array_equal(small, cv2.resize(image, (100, 75), interpolation=cv2.INTER_AREA))
    assert apply(image, "thumbnail(width=1000, height=90)").shape == (90, 120, 3)
    assert np.array_equal(apply(image, "thumbnail(width=1000, height=1000)"), image)


def test_pad_adds_a_border(real_image):
    image = real_image("pil_mode_16bit.png")  # 16-bit BGRA
    out = apply(image, "pad(size=3, fill=255)")
    assert out.shape == (image.shape[0] + 6, image.shape[1] + 6, 4)
    assert (out[:3] == 65535).all() and np.array_equal(out[3:-3, 3:-3], image)


def test_pixelate_makes_uniform_blocks(hopper):
    out = apply(hopper, "pixelate(block=16)")
    blocks = out.reshape(8, 16, 8, 16, 3)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert abs(int(out[:16, :16, 0].mean()) - int(hopper[:16, :16, 0].mean())) <= 1


@pytest.mark.parametrize("name", ["pil_hopper.bmp", "pil_tiff_16bit_RGB.tiff"])
def test_neutral_settings_are_identity(real_image, name):
    image = real_image(name)
    for spec in ["gamma(gamma=1)", "brightness_contrast(brightness=0, contrast=0)", "sharpen(amount=0)",
                 "sepia(strength=0)", "channel_swap(order=bgr)", "rotate(angle=360)", "pad(size=0)"]:
        assert np.array_equal(apply(image, spec), image), spec
    assert np.abs(apply(image, "saturation(factor=1)").astype(int) - image).max() <= 1


def test_brightness_scales_with_depth(hopper):
    deep = hopper.astype(np.uint16) * 257
    spec = "brightness_contrast(brightness=20, contrast=0)"
    assert np.array_equal(apply(deep, spec), apply(hopper, spec).astype(np.uint16) * 257)
    for spec in ["gamma(gamma=2)", "posterize(levels=5)"]:
        # curves keep 16-bit precision: within half an 8-bit step of the 8-bit result
        difference = apply(deep, spec).astype(int) - apply(hopper, spec).astype(int) * 257
        assert 0 < np.abs(difference).max() <= 129, spec


@pytest.mark.parametrize("levels", [2, 3, 7, 64])
def test_posterize_levels(hopper, levels):
    out = apply(hopper, f"posterize(levels={levels})")
    allowed = {round(i * 255 / (levels - 1)) for i in range(levels)}
    assert set(np.unique(out)) <= allowed
    ramp = np.arange(256, dtype=np.uint8)[None]
    assert set(np.unique(apply(ramp, f"posterize(levels={levels})"))) == allowed


def test_autocontrast_stretches_to_full_range():
    image = np.linspace(50, 100, 64 * 64).reshape(64, 64).astype(np.uint8)
    out = apply(image, "autocontrast(cutoff=0)")
    assert out.min() == 0 and out.max() == 255
    colour = np.dstack([image, image // 2, image])
    out = apply(colour, "autocontrast(cutoff=0, mode=per_channel)")
    assert (out.reshape(-1, 3).min(axis=0) == 0).all() and (out.reshape(-1, 3).max(axis=0) == 255).all()


def test_saturation_zero_is_gray_and_hue_turns_back(hopper):
    gray = apply(hopper, "saturation(factor=0)").astype(int)
    assert np.abs(gray[..., 0] - gray[..., 2]).max() <= 1
    back = apply(hopper, "hue_shift(degrees=120) | hue_shift(degrees=-120)").astype(int)
    assert np.abs(back - hopper).max() <= 2


def test_equalize_gray_is_clahe(real_image):
    image = real_image("pil_hopper_gray.jpg")
    assert np.array_equal(apply(image, "equalize"), cv2.createCLAHE(2.0, (8, 8)).apply(image))


def test_filters_match_opencv(hopper):
    assert np.array_equal(apply(hopper, "median(ksize=7)"), cv2.medianBlur(hopper, 7))
    assert np.array_equal(apply(hopper, "bilateral"), cv2.bilateralFilter(hopper, 9, 75, 75))
    deep = hopper.astype(np.uint16) * 257
    assert np.array_equal(apply(deep, "median(ksize=5)"), cv2.medianBlur(deep, 5))


def test_median_and_denoise_remove_noise():
    rng = np.random.default_rng(1)
    image = np.full((64, 64), 128, np.uint8)
    image[rng.random(image.shape) < 0.05] = 255
    assert (apply(image, "median(ksize=3)") == 128).all()
    noisy = np.clip(128 + rng.normal(0, 20, (64, 64)), 0, 255).astype(np.uint8)
    assert apply(noisy, "denoise(strength=20)").std() < noisy.std() / 2


def test_edges_on_a_step():
    image = np.zeros((32, 32), np.uint8)
    image[:, 16:] = 200
    assert (apply(image, "sobel(direction=y)") == 0).all()
    x_edges = apply(image, "sobel(direction=x)")
    assert x_edges[:, 15:17].min() > 0 and x_edges[:, :14].max() == 0
    assert np.array_equal(apply(image, "sobel(direction=both)"), x_edges)
    assert apply(image, "laplacian")[:, 15:17].min() > 0
    flat = np.full((16, 16, 3), 90, np.uint8)
    assert (apply(flat, "laplacian") == 0).all() and np.array_equal(apply(flat, "emboss"), flat)


def test_morphology_on_a_dot():
    image = np.zeros((9, 9), np.uint8)
    image[4, 4] = 255
    assert (apply(image, "morphology(op=erode)") == 0).all()
    assert (apply(image, "morphology(op=open)") == 0).all()
    grown = apply(image, "morphology(op=dilate, ksize=3)")
    assert (grown[3:6, 3:6] == 255).all() and grown.sum() == 9 * 255
    assert apply(image, "morphology(op=dilate, shape=cross)").sum() == 5 * 255
    assert np.array_equal(apply(image, "morphology(op=tophat)"), image)


def test_effects(hopper, real_image):
    assert np.array_equal(apply(hopper, "channel_swap"), hopper[..., ::-1])
    gray = real_image("pil_hopper_gray.jpg")
    assert apply(gray, "sepia").shape == gray.shape + (3,)
    assert np.array_equal(apply(gray, "colormap(name=jet)"), cv2.applyColorMap(gray, cv2.COLORMAP_JET))
    flat = np.full((41, 41, 3), 200, np.uint8)
    dark = apply(flat, "vignette(strength=0.5)")
    assert (dark[20, 20] == 200).all() and (dark[0, 0] == 100).all()
    assert set(np.unique(apply(hopper, "cartoon(levels=2)"))) <= {0, 255}


def test_alpha_is_kept_by_split_operations(real_image):
    image = real_image("sk_horse.png")
    for spec in ["grayscale", "sobel", "sepia", "cartoon"]:
        out = apply(image, spec)
        assert np.array_equal(out[..., 3], image[..., 3]), spec


def test_catalogue_is_json_and_complete():
    entries = json.loads(json.dumps(catalogue()))
    assert len(entries) >= 24
    assert [e["name"] for e in entries] == OP_IDS
    for entry in entries:
        assert entry["description"] and "\n" not in entry["description"]
        assert entry["family"] in FAMILIES
        for param in entry["params"]:
            assert {"name", "type", "default", "description"} <= set(param), (entry["name"], param)


@pytest.mark.parametrize("op", OPS, ids=OP_IDS)
def test_declared_defaults_are_valid(op):
    for param in op.params:
        assert param.coerce(param.default) == param.default, param.name
        assert param.description
    if op.check:
        op.check(op.defaults())
    assert parse_pipeline(op.name) == Pipeline((Step(op.name, tuple(op.defaults().items())),))
    assert get_operation(op.name) is op
