"""Deterministic test audio (numpy only, so the fixture script and the tests
make the same clips): tones, chords, chirps, noise bursts and silence at
16 kHz, written as 16-bit PCM WAV."""

import wave
from pathlib import Path

import numpy as np

RATE = 16_000


def clips() -> dict[str, np.ndarray]:
    """name -> int16 mono samples at 16 kHz (24 clips, 0.25 s to 2 s)."""
    rng = np.random.default_rng(7)
    out = {}
    for i in range(24):
        seconds = [0.25, 0.5, 1.0, 1.5, 2.0][i % 5]
        t = np.arange(int(RATE * seconds)) / RATE
        kind = i % 6
        f = 110.0 * 2 ** (i / 7)
        if kind == 0:
            x = np.sin(2 * np.pi * f * t)
        elif kind == 1:
            x = sum(np.sin(2 * np.pi * f * r * t) / r for r in (1, 1.25, 1.5))
        elif kind == 2:
            x = np.sin(2 * np.pi * (f + 1500 * t / seconds) * t)
        elif kind == 3:
            x = rng.standard_normal(t.size) * (t % 0.25 < 0.1)
        elif kind == 4:
            x = np.sign(np.sin(2 * np.pi * f * t)) * np.exp(-3 * t)
        else:
            x = np.sin(2 * np.pi * f * t) * np.sin(2 * np.pi * 3 * t)
        x = 0.6 * x / max(np.abs(x).max(), 1e-9)
        out[f"clip{i:02d}"] = np.round(x * 32767).astype(np.int16)
    return out


def tone(seconds: float, rate: int, freq: float = 440.0, channels: int = 1) -> np.ndarray:
    """A sine tone as int16, shape (n, channels)."""
    t = np.arange(int(rate * seconds)) / rate
    x = np.round(0.5 * np.sin(2 * np.pi * freq * t) * 32767).astype(np.int16)
    return np.repeat(x[:, None], channels, axis=1)


def write_wav(path: Path, samples: np.ndarray, rate: int = RATE) -> Path:
    s = samples if samples.ndim == 2 else samples[:, None]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(s.shape[1])
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(s.astype("<i2").tobytes())
    return path


def read_wav(path: Path) -> np.ndarray:
    """Mono float32 in [-1, 1) from a 16-bit WAV (channels averaged)."""
    with wave.open(str(path), "rb") as w:
        n, ch = w.getnframes(), w.getnchannels()
        x = np.frombuffer(w.readframes(n), dtype="<i2").reshape(-1, ch)
    return (x.astype(np.float32) / 32768.0).mean(axis=1)
