"""Image processing for the weekly report: safe decoding, dimensions, contact-sheet
thumbnails and near-duplicate detection by a difference hash (dHash).

Uploaded files are user data: a file with an image content type may be anything, and a
400-byte PNG can declare 50,000 x 50,000 pixels. So the header's size is checked before any
pixel is decoded, and whatever Pillow raises on a broken file makes the image "unreadable"
(listed in the report) instead of failing the report.

Memory: an image is decoded by at most ``DECODE_SLOTS`` threads at once, whatever the number
of threads reading files (``render.WORKERS``); a JPEG is decoded at up to 1/8 scale
(``Image.draft``), and every decoded image is shrunk at once to at most ``WORK_SIZE`` pixels
on its longer side: the hash and the thumbnail are made from that. So one decode holds at
most ``MAX_PIXELS`` x 4 bytes (RGBA), plus one byte a pixel while an image with alpha is
shrunk, plus the file's bytes.
"""

from __future__ import annotations

import contextlib
import io
import threading
from collections import defaultdict
from dataclasses import dataclass
from itertools import combinations
from typing import BinaryIO

from PIL import ExifTags, Image, UnidentifiedImageError

# The most pixels decoded for one image, counted after a JPEG's reduced decoding (so a JPEG
# whose header declares up to 64 times this is still decoded, at 1/8 scale). 16 megapixels
# decoded as RGBA is 64 MB, and at most DECODE_SLOTS (2) decodes run at once: about 130 MB for
# the images of a report, whatever the number of threads. It covers a 12-megapixel phone
# photograph, an A4 page scanned at 400 dpi (15.5 MP) and any JPEG up to 1 gigapixel.
# Larger PNG, TIFF, WebP or BMP files (an A4 page at 600 dpi saved as PNG is 35 MP) are
# listed as over the limit with their dimensions, read from the header: the report only
# needs a 128-pixel thumbnail and a 9 x 8 hash from them, not 140 MB of pixels each.
# Pillow's own guard (MAX_IMAGE_PIXELS) is a process-wide setting other code may rely on,
# so this limit is checked here instead.
MAX_PIXELS = 16_000_000
# Decodes at once, in the whole process: the threads reading files (MD5) wait here.
DECODE_SLOTS = 2
_decode_slots = threading.BoundedSemaphore(DECODE_SLOTS)
# A file larger than this is not decoded (its MD5 is still verified, streamed).
MAX_IMAGE_BYTES = 64 * 1024 * 1024
THUMBNAIL_SIZE = 128  # pixels, the longer side of a contact-sheet thumbnail
# Every decoded image is shrunk to this (longer side) before hashing and thumbnailing.
WORK_SIZE = THUMBNAIL_SIZE * 2
HASH_BITS = 64
# Two images whose 64-bit dHashes differ in at most this many bits are near-duplicates:
# the same picture re-encoded or slightly edited moves a few bits; different pictures
# differ in about half of them.
NEAR_DUPLICATE_BITS = 6
# Modes with more than 8 bits per channel: stretched from their lowest to their highest
# value onto 0-255 before hashing or drawing (a plain convert("L") clips them to white).
_HIGH_DEPTH = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
# EXIF orientation -> the transposition that puts the picture upright (as ImageOps does).
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class ImageFacts:
    """What the report needs from one image: its size and hash, or why it is unreadable."""

    width: int | None = None
    height: int | None = None
    format: str | None = None
    dhash: int | None = None
    thumbnail: bytes | None = None  # JPEG, only when asked for
    unreadable: str | None = None  # the reason, when the file could not be decoded


def examine(data: bytes | BinaryIO, *, thumbnail: bool = False) -> ImageFacts:
    """Decode ``data`` (bytes, or a seekable binary file, read from where it stands) safely:
    dimensions, dHash and, if asked, a JPEG thumbnail."""
    try:
        source = io.BytesIO(data) if isinstance(data, bytes | bytearray | memoryview) else data
        with Image.open(source) as image:
            width, height = image.size
            # JPEG decodes at 1/2, 1/4 or 1/8 scale when asked: much faster, much smaller, and
            # both the hash and a thumbnail need far fewer pixels than a photograph has.
            image.draft("RGB", (WORK_SIZE, WORK_SIZE))
            decoded = image.size[0] * image.size[1]
            if decoded > MAX_PIXELS:
                return ImageFacts(
                    width,
                    height,
                    image.format,
                    unreadable=(
                        f"{width} x {height} pixels is over the {MAX_PIXELS:,}-pixel limit "
                        "(not decoded: too large for the report, or a possible decompression "
                        "bomb)"
                    ),
                )
            with _decode_slots:
                return _decode(image, width, height, thumbnail)
    except Image.DecompressionBombError as error:
        return ImageFacts(unreadable=f"not decoded: a possible decompression bomb ({error})")
    except UnidentifiedImageError:  # its message names a Python object, not the file
        return ImageFacts(unreadable="cannot be decoded as an image: not a format Pillow reads")
    # Pillow raises many types on a broken file (OSError, SyntaxError, ValueError,
    # struct.error, EOFError, ...): each of them means "this is not a readable image".
    except Exception as error:  # noqa: BLE001
        reason = str(error) or type(error).__name__
        return ImageFacts(unreadable=f"cannot be decoded as an image: {reason}"[:300])


def _decode(image: Image.Image, width: int, height: int, thumbnail: bool) -> ImageFacts:
    """Decode (the one full-size buffer), shrink at once, then hash and thumbnail the small
    image. Called under ``_decode_slots``."""
    upright = None
    if thumbnail:  # a broken EXIF block costs the rotation, not the image
        with contextlib.suppress(Exception):
            upright = _UPRIGHT.get(image.getexif().get(ExifTags.Base.Orientation))
    image.load()
    small = shrink(image, WORK_SIZE)
    image.close()  # the full-size pixels go now, not when the caller's ``with`` ends
    return ImageFacts(
        width,
        height,
        image.format,
        dhash=dhash(small),
        thumbnail=_thumbnail(small, upright) if thumbnail else None,
    )


def shrink(image: Image.Image, size: int) -> Image.Image:
    """``image`` with its longer side at most ``size`` (box-averaged), as a new small image
    (without its alpha channel when it had to be shrunk); the only full-size copies made are
    for palette and 1-bit images (1 to 4 bytes a pixel) and one band of an image with alpha."""
    if image.mode in ("1", "P", "PA"):  # averaging palette indices means nothing
        if image.mode == "1":
            image = image.convert("L")
        else:
            has_alpha = image.mode == "PA" or "transparency" in image.info
            image = image.convert("RGBA" if has_alpha else "RGB")
    longer = max(image.size)
    if longer <= size:
        return image.copy()
    target = (
        max(1, round(image.size[0] * size / longer)),
        max(1, round(image.size[1] * size / longer)),
    )
    if image.mode in ("LA", "RGBA"):
        # Image.resize first converts these to premultiplied alpha, a full-size copy of 4
        # bytes a pixel. The hash and the thumbnail drop the alpha anyway, so the colour
        # channels are resampled one at a time: a full-size copy of one byte a pixel.
        colour = image.mode[:-1]
        bands = [image.getchannel(band).resize(target, Image.Resampling.BOX) for band in colour]
        return Image.merge(colour, bands)
    return image.resize(target, Image.Resampling.BOX)


def eight_bit(image: Image.Image) -> Image.Image:
    """``image`` with at most 8 bits a channel: a 16-bit or 32-bit greyscale image is
    stretched from its lowest to its highest value onto 0-255 (medical images often use 10
    or 12 of their 16 bits; a plain ``convert("L")`` clips everything over 255 to white).
    Meant for small images (it makes a 4-byte-a-pixel copy)."""
    if image.mode not in _HIGH_DEPTH:
        return image
    values = image.convert("F")
    low, high = values.getextrema()
    if high <= low:
        return Image.new("L", image.size, 0)
    scale = 255.0 / (high - low)
    return values.point(lambda v: v * scale - low * scale).convert("L")


def dhash(image: Image.Image) -> int:
    """The 64-bit difference hash: 9 x 8 grey pixels, one bit per horizontal neighbour
    pair (is the left one brighter?). Robust to re-encoding, scaling and small edits."""
    small = eight_bit(image).convert("L").resize((9, 8), Image.Resampling.BOX)
    pixels = small.tobytes()
    value = 0
    for row in range(8):
        offset = row * 9
        for column in range(8):
            value = (value << 1) | (pixels[offset + column] > pixels[offset + column + 1])
    return value


def _thumbnail(image: Image.Image, upright: Image.Transpose | None = None) -> bytes:
    """A JPEG thumbnail of a small image (see ``shrink``), turned upright."""
    image = eight_bit(image)
    if image.mode not in ("RGB", "L"):
        image = image.convert("RGBA").convert("RGB") if "A" in image.mode else image.convert("RGB")
    if upright is not None:
        image = image.transpose(upright)
    thumb = image.copy()
    thumb.thumbnail((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BILINEAR)
    out = io.BytesIO()
    thumb.save(out, "JPEG", quality=75)
    return out.getvalue()


def _distance(first: int, second: int) -> int:
    """Bits that differ between two hashes (one comparison of the grouping)."""
    return (first ^ second).bit_count()


def near_duplicate_groups(
    hashes: dict[int, int], max_distance: int = NEAR_DUPLICATE_BITS
) -> list[list[int]]:
    """Group keys whose hashes are within ``max_distance`` bits, transitively.

    ``hashes`` maps a key (a document id) to its 64-bit hash. Returns the groups of two or
    more keys, each sorted, largest group first.

    Keys with the same hash are one group from the start: only distinct hashes are compared.
    Not all pairs of them (3.7 s for 5,000 images): split the 64 bits into
    ``max_distance + 2`` bands. Two hashes within ``max_distance`` bits differ in at most
    that many bands, so they agree exactly on at least two (pigeonhole). Bucketing by every
    pair of bands compares only hashes that share two band values, and finds exactly the
    pairs an all-pairs comparison finds. Within a bucket, a hash is compared with each group
    already there (member by member, until one is close) but never with its own group, so
    thousands of alike images cost about one comparison each, not one per pair.
    """
    bands = max_distance + 2
    edges = [round(i * HASH_BITS / bands) for i in range(bands + 1)]
    band_masks = [((1 << (edges[i + 1] - edges[i])) - 1) << edges[i] for i in range(bands)]
    values = sorted(set(hashes.values()))
    parent = {value: value for value in values}

    def find(value: int) -> int:
        while parent[value] != value:
            parent[value] = parent[parent[value]]
            value = parent[value]
        return value

    for first_band, second_band in combinations(range(bands), 2):
        mask = band_masks[first_band] | band_masks[second_band]
        buckets: dict[int, list[int]] = defaultdict(list)
        for value in values:
            buckets[value & mask].append(value)
        for members in buckets.values():
            if len(members) < 2:
                continue
            # this bucket's members so far, by the root of their group
            groups_here: dict[int, list[int]] = {}
            for value in members:
                joined = groups_here.pop(find(value), [])
                for root in list(groups_here):
                    for other in groups_here[root]:
                        if _distance(value, other) <= max_distance:
                            parent[find(root)] = find(value)
                            joined += groups_here.pop(root)
                            break
                joined.append(value)
                groups_here[find(value)] = joined

    groups: dict[int, list[int]] = defaultdict(list)
    for key, value in hashes.items():
        groups[find(value)].append(key)
    found = [sorted(members) for members in groups.values() if len(members) > 1]
    return sorted(found, key=lambda members: (-len(members), members[0]))
