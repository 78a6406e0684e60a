"""Real media encoding / decoding with PyAV and numpy (what ComfyUI's save/load nodes do)."""

from __future__ import annotations

import io
import json
import math
import struct
import zlib
from fractions import Fraction
from typing import Any

import av
import numpy as np
import numpy.typing as npt

FloatArray = npt.NDArray[np.float32]
OPUS_RATES = (8000, 12000, 16000, 24000, 48000)


def to_uint8(image: FloatArray) -> npt.NDArray[np.uint8]:
    """[H, W, C] floats in 0..1 → uint8 RGB, like ``np.clip(255. * i, 0, 255).astype(uint8)``."""
    out: npt.NDArray[np.uint8] = np.clip(255.0 * image[..., :3], 0, 255).astype(np.uint8)
    return out


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bytes(rgb: npt.NDArray[np.uint8], text: dict[str, str] | None = None) -> bytes:
    """Encode one RGB frame as PNG (PyAV's png encoder), with ``tEXt`` chunks like PIL's PngInfo."""
    height, width = rgb.shape[:2]
    codec = av.CodecContext.create("png", "w")
    codec.width, codec.height, codec.pix_fmt = width, height, "rgb24"
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
    data = b"".join(bytes(p) for p in codec.encode(frame)) + b"".join(bytes(p) for p in codec.encode(None))
    if not text:
        return data
    ihdr_end = 8 + 8 + 13 + 4
    chunks = b"".join(
        _png_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1", "replace")) for k, v in text.items()
    )
    return data[:ihdr_end] + chunks + data[ihdr_end:]


def read_image(path: str) -> tuple[FloatArray, FloatArray]:
    """LoadImage: every frame of the file's size → ([B, H, W, 3] floats, [B, H, W] mask = 1 - alpha)."""
    images: list[FloatArray] = []
    masks: list[FloatArray] = []
    with av.open(path) as container:
        for frame in container.decode(video=0):
            rgba = frame.to_ndarray(format="rgba").astype(np.float32) / 255.0
            if images and rgba.shape[:2] != images[0].shape[:2]:
                continue
            images.append(rgba[..., :3])
            has_alpha = frame.format.name in {"rgba", "pal8", "ya8", "rgba64be", "ya16be"}
            masks.append(1.0 - rgba[..., 3] if has_alpha else np.zeros(rgba.shape[:2], np.float32))
    if not images:
        raise ValueError("No image frames decoded.")
    return np.stack(images), np.stack(masks)


def decode_audio(path: str) -> tuple[FloatArray, int]:
    """LoadAudio's ``load``: [channels, samples] float32 and the sample rate."""
    with av.open(path) as container:
        if not container.streams.audio:
            raise ValueError("No audio stream found in the file.")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate)
        channels = int(stream.channels)
        resampler = av.AudioResampler(format="fltp", layout=stream.layout.name, rate=rate)
        parts: list[FloatArray] = []
        for frame in container.decode(stream):
            for out in resampler.resample(frame):
                parts.append(out.to_ndarray().reshape(channels, -1).astype(np.float32))
        for out in resampler.resample(None):
            parts.append(out.to_ndarray().reshape(channels, -1).astype(np.float32))
    if not parts:
        raise ValueError("No audio frames decoded.")
    return np.concatenate(parts, axis=1), rate


def decode_video(path: str) -> tuple[FloatArray, float]:
    """LoadVideo's frames: [frames, H, W, 3] floats and the frame rate."""
    with av.open(path) as container:
        if not container.streams.video:
            raise ValueError("No video stream found in the file.")
        stream = container.streams.video[0]
        rate = float(stream.average_rate or stream.guessed_rate or 24)
        frames = [f.to_ndarray(format="rgb24").astype(np.float32) / 255.0 for f in container.decode(stream)]
    if not frames:
        raise ValueError("No video frames decoded.")
    return np.stack(frames), rate


def _layout(channels: int) -> str:
    return "mono" if channels == 1 else "stereo"


def _audio_frame(waveform: FloatArray, rate: int) -> av.AudioFrame:
    packed = np.ascontiguousarray(waveform.T.reshape(1, -1), dtype=np.float32)
    frame = av.AudioFrame.from_ndarray(packed, format="flt", layout=_layout(waveform.shape[0]))
    frame.sample_rate = rate
    frame.pts = 0
    return frame


def encode_audio(waveform: FloatArray, rate: int, fmt: str, quality: str, metadata: dict[str, str]) -> bytes:
    """``save_audio`` of ComfyUI 0.3.64: flac / mp3 (V0, 128k, 320k) / opus (resampled to an Opus rate)."""
    if fmt == "opus" and rate not in OPUS_RATES:
        target = 48000 if rate > 48000 else next((r for r in OPUS_RATES if r > rate), 48000)
        resampler = av.AudioResampler(format="flt", layout=_layout(waveform.shape[0]), rate=target)
        frames = resampler.resample(_audio_frame(waveform, rate)) + resampler.resample(None)
        parts = [f.to_ndarray().reshape(-1, waveform.shape[0]).T for f in frames]
        waveform = np.concatenate(parts, axis=1).astype(np.float32) if parts else waveform[:, :0]
        rate = target
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=fmt) as container:
        for key, value in metadata.items():
            container.metadata[key] = value
        layout = _layout(waveform.shape[0])
        if fmt == "opus":
            stream: Any = container.add_stream("libopus", rate=rate, layout=layout)
            stream.bit_rate = int(quality.rstrip("k")) * 1000
        elif fmt == "mp3":
            stream = container.add_stream("libmp3lame", rate=rate, layout=layout)
            if quality == "V0":
                stream.codec_context.qscale = 1
            else:
                stream.bit_rate = int(quality.rstrip("k")) * 1000
        else:
            stream = container.add_stream("flac", rate=rate, layout=layout)
        if waveform.shape[1] > 0:
            container.mux(stream.encode(_audio_frame(waveform, rate)))
        container.mux(stream.encode(None))
    return buffer.getvalue()


def encode_mp4(
    path: str, images: FloatArray, fps: float, audio: dict[str, Any] | None, metadata: dict[str, Any] | None
) -> None:
    """``VideoFromComponents.save_to``: h264 yuv420p, plus AAC cut to the video's length."""
    with av.open(path, mode="w", options={"movflags": "use_metadata_tags"}) as output:
        for key, value in (metadata or {}).items():
            output.metadata[key] = json.dumps(value)
        frame_rate = Fraction(round(fps * 1000), 1000)
        video: Any = output.add_stream("h264", rate=frame_rate)
        video.width, video.height, video.pix_fmt = images.shape[2], images.shape[1], "yuv420p"
        audio_stream: Any = None
        if audio:
            audio_rate = int(audio["sample_rate"])
            audio_stream = output.add_stream("aac", rate=audio_rate)
        for image in images:
            frame = av.VideoFrame.from_ndarray(to_uint8(image), format="rgb24").reformat(format="yuv420p")
            output.mux(video.encode(frame))
        output.mux(video.encode(None))
        if audio_stream is not None and audio:
            waveform: FloatArray = audio["waveform"][0]
            waveform = waveform[:, : math.ceil((audio_rate / frame_rate) * images.shape[0])]
            output.mux(audio_stream.encode(_audio_frame(waveform, audio_rate)))
            output.mux(audio_stream.encode(None))


def encode_webm(path: str, images: FloatArray, fps: float, crf: float, codec: str, metadata: dict[str, str]) -> None:
    """SaveWEBM: vp9 (yuv420p) or av1 (yuv420p10le), constant quality ``crf``."""
    with av.open(path, mode="w") as container:
        for key, value in metadata.items():
            container.metadata[key] = value
        codec_name = {"vp9": "libvpx-vp9", "av1": "libsvtav1"}[codec]
        stream: Any = container.add_stream(codec_name, rate=Fraction(round(fps * 1000), 1000))
        stream.width, stream.height = images.shape[-2], images.shape[-3]
        stream.pix_fmt = "yuv420p10le" if codec == "av1" else "yuv420p"
        stream.bit_rate = 0
        stream.options = {"crf": str(crf), "deadline": "realtime", "cpu-used": "8"}
        if codec == "av1":
            stream.options = {"crf": str(crf), "preset": "6"}
        for image in images:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(to_uint8(image), format="rgb24")))
        container.mux(stream.encode(None))


def jpeg_bytes(rgb: npt.NDArray[np.uint8], quality: int = 95) -> bytes:
    """Encode one RGB frame as baseline JPEG (PyAV's mjpeg encoder), as ComfyUI's previewer sends it."""
    height, width = rgb.shape[:2]
    # yuvj420p needs even sizes; pad by repeating the last row / column, as an encoder would.
    padded = np.pad(rgb, ((0, height % 2), (0, width % 2), (0, 0)), mode="edge")
    codec = av.CodecContext.create("mjpeg", "w")
    codec.width, codec.height, codec.pix_fmt = padded.shape[1], padded.shape[0], "yuvj420p"
    codec.time_base = Fraction(1, 25)
    codec.options = {"qmin": "1", "qmax": str(max(1, (100 - quality) // 3 + 1))}
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(padded), format="rgb24").reformat(format="yuvj420p")
    return b"".join(bytes(p) for p in codec.encode(frame)) + b"".join(bytes(p) for p in codec.encode(None))
