"""TFRecord framing, written and read without TensorFlow.

A request log is a TFRecord file of ``PredictionLog`` records, the format of TF Serving's
warmup files, so ``tf.data.TFRecordDataset`` reads it and a log can become a warmup file
unchanged. Writing it here (one ``struct.pack`` and two masked crc32c's per record) keeps
the writer thread free of TensorFlow, and lets a kernel without TensorFlow read a log.

Each record is ``uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)``,
little-endian, as ``tensorflow/core/lib/io/record_writer.cc`` writes it.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator

import google_crc32c

_MASK_DELTA = 0xA282EAD8
# A record larger than this is not a request log record but a damaged file: refuse to allocate it.
MAX_RECORD_BYTES = 1 << 31


def masked_crc32c(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(data: bytes) -> bytes:
    """One record, framed: what is appended to the file."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", masked_crc32c(length)) + data + struct.pack("<I", masked_crc32c(data))


class CorruptRecord(ValueError):
    """A TFRecord file whose framing or checksums are wrong; the message names the file and offset."""


def read_records(path: str | os.PathLike[str]) -> Iterator[bytes]:
    """The records of one TFRecord file, checksums verified. A truncated last record (a writer
    that died mid-write) ends the file quietly; a bad checksum raises ``CorruptRecord``."""
    with open(path, "rb") as handle:
        offset = 0
        while True:
            header = handle.read(12)
            if len(header) < 12:
                return
            length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
            if masked_crc32c(length_bytes) != length_crc:
                raise CorruptRecord(f"{path}: bad length checksum at offset {offset}")
            (length,) = struct.unpack("<Q", length_bytes)
            if length > MAX_RECORD_BYTES:
                raise CorruptRecord(f"{path}: record of {length} bytes at offset {offset} is too large")
            data = handle.read(length)
            footer = handle.read(4)
            if len(data) < length or len(footer) < 4:
                return
            if masked_crc32c(data) != struct.unpack("<I", footer)[0]:
                raise CorruptRecord(f"{path}: bad data checksum at offset {offset}")
            offset += 16 + length
            yield data
