"""Classical image codecs as rate-distortion runners: JPEG, WebP, JPEG 2000, AVIF, HEVC-intra, BPG, JPEG XL.

Every runner takes an ``(H, W, 3)`` uint8 RGB array and one quality parameter (meaning given by
its codec's ``parameter``) and returns a :class:`~dqcodec.eval.runner.Coded`: the real file
bytes, the decoded image and the wall-clock encode and decode seconds. Codecs that need an
optional library or program say why they cannot run through ``unavailable_reason()``.
"""

import importlib.metadata
import importlib.util
import io
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, features

from dqcodec.codec.errors import DQCodecError
from dqcodec.eval.runner import Coded, RDCodec


def _pillow_roundtrip(image: np.ndarray, image_format: str, **options) -> Coded:
    start = time.perf_counter()
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=image_format, **options)
    data = buffer.getvalue()
    encode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    with Image.open(io.BytesIO(data)) as decoded_image:
        decoded = np.asarray(decoded_image.convert("RGB"))
    return Coded(data, decoded, encode_seconds, time.perf_counter() - start)


def jpeg(image: np.ndarray, quality: float) -> Coded:
    """Pillow JPEG (libjpeg-turbo), 4:2:0, baseline with default tables; ``quality`` 1-100."""
    return _pillow_roundtrip(image, "JPEG", quality=int(quality), subsampling="4:2:0")


def jpeg444(image: np.ndarray, quality: float) -> Coded:
    """Pillow JPEG without chroma subsampling (4:4:4); ``quality`` 1-100."""
    return _pillow_roundtrip(image, "JPEG", quality=int(quality), subsampling="4:4:4")


def webp(image: np.ndarray, quality: float) -> Coded:
    """Pillow lossy WebP (libwebp, method 4 as Pillow's default); ``quality`` 0-100."""
    return _pillow_roundtrip(image, "WEBP", quality=int(quality), method=4)


def jpeg2000(image: np.ndarray, compression_ratio: float) -> Coded:
    """Pillow JPEG 2000 (OpenJPEG) raw codestream, 9/7 wavelet with the colour transform.

    ``compression_ratio`` is the ratio of 24-bit RGB to the coded size (OpenJPEG's rate control),
    so the target rate is ``24 / compression_ratio`` bpp. The file is the bare ``.j2k`` codestream
    (JP2 boxes would add about 100 bytes).

    CompressAI's published JPEG 2000 anchor went through ffmpeg's libopenjpeg wrapper: the
    reversible 5/3 wavelet on 8-bit limited-range YCbCr. That pipeline, replayed with OpenJPEG
    here, lands within 0.03 dB of the anchor; these settings are 0.6-1.5 dB better.
    """
    return _pillow_roundtrip(
        image,
        "JPEG2000",
        no_jp2=True,
        quality_mode="rates",
        quality_layers=[float(compression_ratio)],
        irreversible=True,  # the lossy 9/7 wavelet; Pillow's default, the reversible 5/3, costs 0.4-1.2 dB
        mct=1,  # RGB -> YCbCr before the wavelet; coding R, G, B separately costs 2-5 dB
    )


def _avif(image: np.ndarray, quality: float, subsampling: str) -> Coded:
    # One thread so that timings compare with the other single-threaded runners.
    return _pillow_roundtrip(image, "AVIF", quality=int(quality), subsampling=subsampling, speed=6, max_threads=1)


def avif(image: np.ndarray, quality: float) -> Coded:
    """Pillow AVIF (libavif + libaom, speed 6), 4:4:4; ``quality`` 0-100."""
    return _avif(image, quality, "4:4:4")


def avif420(image: np.ndarray, quality: float) -> Coded:
    """Pillow AVIF (libavif + libaom, speed 6), 4:2:0; ``quality`` 0-100."""
    return _avif(image, quality, "4:2:0")


def _hevc(image: np.ndarray, quality: float, chroma: str) -> Coded:
    import pillow_heif

    height, width = image.shape[:2]
    start = time.perf_counter()
    heif_file = pillow_heif.from_bytes("RGB", (width, height), image.tobytes())
    buffer = io.BytesIO()
    # x265's psnr tune turns adaptive quantization off, as BPG's constant-QP mode has it (libheif's
    # default is the ssim tune; on Kodak the two differ by ~0.3 % BD-rate).
    heif_file.save(buffer, format="HEIF", quality=int(quality), chroma=chroma, enc_params={"tune": "psnr"})
    data = buffer.getvalue()
    encode_seconds = time.perf_counter() - start

    start = time.perf_counter()
    decoded = np.asarray(pillow_heif.open_heif(io.BytesIO(data), convert_hdr_to_8bit=True).to_pillow().convert("RGB"))
    return Coded(data, decoded, encode_seconds, time.perf_counter() - start)


def hevc(image: np.ndarray, quality: float) -> Coded:
    """HEVC-intra in HEIF via pillow-heif (libheif + x265, tune psnr), 4:4:4; ``quality`` 0-100."""
    return _hevc(image, quality, "444")


def hevc420(image: np.ndarray, quality: float) -> Coded:
    """HEVC-intra in HEIF via pillow-heif (libheif + x265, tune psnr), 4:2:0; ``quality`` 0-100."""
    return _hevc(image, quality, "420")


def bpg(image: np.ndarray, qp: float) -> Coded:
    """BPG through the ``bpgenc`` / ``bpgdec`` programs, 4:4:4, x265; ``qp`` 0-51 (lower is better).

    The times include writing and reading the PNG files the programs exchange.
    """
    with tempfile.TemporaryDirectory(prefix="dqcodec-bpg-") as folder:
        source, coded, output = Path(folder, "in.png"), Path(folder, "out.bpg"), Path(folder, "out.png")
        start = time.perf_counter()
        Image.fromarray(image).save(source)
        subprocess.run(["bpgenc", "-f", "444", "-q", str(int(qp)), "-o", str(coded), str(source)], check=True)
        data = coded.read_bytes()
        encode_seconds = time.perf_counter() - start

        start = time.perf_counter()
        subprocess.run(["bpgdec", "-o", str(output), str(coded)], check=True)
        with Image.open(output) as decoded_image:
            decoded = np.asarray(decoded_image.convert("RGB"))
        return Coded(data, decoded, encode_seconds, time.perf_counter() - start)


def jpegxl(image: np.ndarray, quality: float) -> Coded:
    """JPEG XL through the ``pillow-jxl-plugin`` package (libjxl, effort 7); ``quality`` 0-100."""
    import pillow_jxl  # noqa: F401  (registers the JXL format with Pillow)

    # One thread so that timings compare with the other single-threaded runners.
    return _pillow_roundtrip(image, "JXL", quality=int(quality), effort=7, num_threads=1)


def _needs_pillow_feature(feature: str, what: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        if features.check(feature):
            return None
        return f"this Pillow build has no {what} support (features.check({feature!r}) is False)"

    return reason


def _needs_module(module: str, package: str) -> Callable[[], str | None]:
    def reason() -> str | None:
        if importlib.util.find_spec(module) is not None:
            return None
        return f"the Python package {package!r} is not installed (pip install {package})"

    return reason


def _hevc_unavailable() -> str | None:
    if importlib.util.find_spec("pillow_heif") is None:
        return "the Python package 'pillow-heif' is not installed (pip install pillow-heif)"
    import pillow_heif

    if "x265" not in pillow_heif.libheif_info().get("encoders", {}):
        return "this pillow-heif build has no x265 HEVC encoder"
    return None


def _bpg_unavailable() -> str | None:
    missing = [program for program in ("bpgenc", "bpgdec") if shutil.which(program) is None]
    if missing:
        return f"{' and '.join(missing)} not found on PATH (install libbpg's tools to measure BPG)"
    return None


_QUALITY = "quality (0-100, higher is better)"
# Ladders chosen on Kodak to span about 0.05-2 bpp (or from the codec's lowest reachable rate).
_JPEG_LADDER = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90)
_AVIF_LADDER = (0, 10, 20, 30, 40, 50, 60, 70, 85)
_HEVC_LADDER = (0, 5, 10, 15, 20, 30, 40, 50, 60)


def _classical(name, label, description, parameter, ladder, run, unavailable_reason) -> RDCodec:
    return RDCodec(
        name=name,
        label=label,
        description=description,
        kind="classical",
        parameter=parameter,
        points=ladder,
        run=run,
        unavailable_reason=unavailable_reason,
    )


_JPEG_READY = _needs_pillow_feature("jpg", "JPEG")
_AVIF_READY = _needs_pillow_feature("avif", "AVIF")
_HEVC_LABEL = "HEVC-intra {} (x265 via pillow-heif, BPG's engine)"
_HEVC_DESCRIPTION = "HEVC-intra in HEIF, pillow-heif / libheif + x265 (tune psnr), {}"

CLASSICAL_CODECS: dict[str, RDCodec] = {
    codec.name: codec
    for codec in (
        _classical("jpeg", "JPEG (4:2:0)", "JPEG, Pillow / libjpeg-turbo, 4:2:0, standard tables", _QUALITY,
                   _JPEG_LADDER, jpeg, _JPEG_READY),
        _classical("jpeg444", "JPEG (4:4:4)", "JPEG, Pillow / libjpeg-turbo, 4:4:4, standard tables", _QUALITY,
                   _JPEG_LADDER, jpeg444, _JPEG_READY),
        _classical("webp", "WebP", "WebP lossy, Pillow / libwebp, method 4", _QUALITY,
                   (0, 5, 15, 30, 45, 60, 75, 85, 90), webp, _needs_pillow_feature("webp", "WebP")),
        _classical("jpeg2000", "JPEG 2000 (OpenJPEG)", "JPEG 2000, Pillow / OpenJPEG, 9/7 wavelet, .j2k codestream",
                   "compression ratio against 24-bit RGB (target bpp = 24 / ratio)",
                   (384, 192, 128, 96, 64, 48, 32, 24, 16, 12), jpeg2000,
                   _needs_pillow_feature("jpg_2000", "JPEG 2000")),
        _classical("avif", "AVIF (4:4:4)", "AVIF, Pillow / libavif + libaom, speed 6, 4:4:4", _QUALITY,
                   _AVIF_LADDER, avif, _AVIF_READY),
        _classical("avif420", "AVIF (4:2:0)", "AVIF, Pillow / libavif + libaom, speed 6, 4:2:0", _QUALITY,
                   _AVIF_LADDER, avif420, _AVIF_READY),
        _classical("hevc", _HEVC_LABEL.format("4:4:4"), _HEVC_DESCRIPTION.format("4:4:4"), _QUALITY,
                   _HEVC_LADDER, hevc, _hevc_unavailable),
        _classical("hevc420", _HEVC_LABEL.format("4:2:0"), _HEVC_DESCRIPTION.format("4:2:0"), _QUALITY,
                   _HEVC_LADDER, hevc420, _hevc_unavailable),
        _classical("bpg", "BPG (4:4:4)", "BPG, bpgenc / bpgdec, x265, 4:4:4", "QP (0-51, lower is better)",
                   (45, 42, 39, 36, 33, 30, 27, 24, 21), bpg, _bpg_unavailable),
        _classical("jpegxl", "JPEG XL", "JPEG XL, pillow-jxl-plugin / libjxl, effort 7", _QUALITY,
                   (1, 10, 20, 30, 45, 60, 75, 85, 90), jpegxl, _needs_module("pillow_jxl", "pillow-jxl-plugin")),
    )
}


def get_classical(name: str) -> RDCodec:
    """The classical codec called ``name`` that can run here.

    Raises:
        DQCodecError: for an unknown name, or a codec whose library or program is missing
            (the message says which).
    """
    if name not in CLASSICAL_CODECS:
        raise DQCodecError(f"unknown classical codec {name!r}; known: {', '.join(CLASSICAL_CODECS)}")
    codec = CLASSICAL_CODECS[name]
    reason = codec.unavailable_reason()
    if reason is not None:
        raise DQCodecError(f"codec {name!r} cannot run here: {reason}")
    return codec


def software_versions() -> dict[str, str]:
    """Versions of the libraries behind the classical runners, for the results' provenance."""
    import PIL

    versions = {"pillow": PIL.__version__}
    for feature, library in (("libjpeg_turbo", "libjpeg-turbo"), ("webp", "libwebp"), ("jpg_2000", "openjpeg"), ("avif", "libavif")):
        version = features.version(feature)
        if version:
            versions[library] = version
    if _hevc_unavailable() is None:
        import pillow_heif

        info = pillow_heif.libheif_info()
        versions["pillow_heif"] = pillow_heif.__version__
        versions["libheif"] = info["libheif"]
        versions["x265"] = info["encoders"]["x265"]
    if _needs_module("pillow_jxl", "pillow-jxl-plugin")() is None:
        versions["pillow_jxl_plugin"] = importlib.metadata.version("pillow-jxl-plugin")
    return versions
