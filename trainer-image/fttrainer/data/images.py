"""Images in rows: where a row puts them, what a reference may be, and the check every image
passes before any GPU time is spent.

A row carries images in one of the layouts users have (data/formats.py reads them):

- chat content parts, TRL's and transformers' `{"type": "image", "image": REF}` (also
  `"url"` or `"path"` for REF) and OpenAI's `{"type": "image_url", "image_url": {"url":
  REF}}`;
- an `images` column (`columns.images`) beside `<image>` placeholders in the turns' text, in
  order: the ShareGPT / LLaMA-Factory layout, and TRL's (`{"type": "image"}` parts with no
  REF of their own).

Either way a converted sample holds its text with one `<image>` placeholder where each image
goes and `images`, the references in the same order; a turn's placeholders become image
parts when the processor renders the sample (data/tokens.py).

REF is a path relative to the data file (its folder locally, its prefix in S3), an `s3://`
URI, a `data:image/...;base64,` URL, or a Hugging Face datasets image (`{"bytes": ...}`).
Web URLs are refused: the trainer fetches nothing a platform did not allow (upload the
images beside the data; `finetune submit` does). A relative path may not leave the data
file's folder when the data file is in S3.

`check_image` opens the bytes with Pillow: what is not an image, a file cut short, and an
image with more pixels than the bound (a decompression bomb: read from the header, before
decoding) are refused with the reason; the data check attaches the file and line.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import io
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ftapi.v1alpha1.vision import MAX_IMAGE_PIXELS

from .sources import DataUnavailableError

PLACEHOLDER = "<image>"
# What a converter leaves in a turn's text for an image part with its own reference, until
# convert_row moves the reference into the sample's `images` (formats.with_images).
_INLINE = "\x00image:"
_INLINE_RE = re.compile("\x00image:(?P<index>[0-9]+)\x00")
DEFAULT_MAX_PIXELS = MAX_IMAGE_PIXELS  # Pillow's own decompression-bomb threshold
FORMATS = ("PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF")  # MPO: phones' JPEGs
QUOTE = 80


class ImageError(ValueError):
    """A reference that cannot be read, or bytes that are no usable image (the message
    says which)."""


@dataclass(frozen=True)
class Checked:
    """An image that passed: its digest (the key it is kept under), format and size."""

    digest: str
    format: str
    width: int
    height: int
    size: int


def quote(ref: Any) -> str:
    """A reference as an error message shows it (a data: URL cut short)."""
    text = repr(ref)
    return text if len(text) <= QUOTE else text[: QUOTE - 3] + "..."


def part_reference(part: Mapping[str, Any], where: str) -> str | None:
    """The reference of an image content part; None for a bare `{"type": "image"}` (its
    image comes from the `images` column). Raises ImageError for a part of another shape."""
    kind = part.get("type")
    if kind == "image_url":
        value = part.get("image_url")
        url = value.get("url") if isinstance(value, Mapping) else value
        if not isinstance(url, str) or not url:
            raise ImageError(f"{where}.image_url: expected {{'url': ...}}, got {quote(value)}")
        return url
    for key in ("image", "url", "path"):
        if part.get(key) is not None:
            return reference(part[key], f"{where}.{key}")
    return None


def reference(value: Any, where: str) -> str:
    """A reference as a string: a path, URI or data: URL as given; a Hugging Face datasets
    image (`{"bytes": b"...", "path": ...}`) as a data: URL of its bytes, else its path."""
    if isinstance(value, str) and value:
        return value
    if isinstance(value, Mapping):
        raw = value.get("bytes")
        if isinstance(raw, bytes | bytearray) and raw:
            return "data:image;base64," + base64.b64encode(bytes(raw)).decode()
        if isinstance(value.get("path"), str) and value["path"]:
            return str(value["path"])
    raise ImageError(f"{where}: expected an image path, s3:// URI or data: URL, got {quote(value)}")


def inline(index: int) -> str:
    """The mark a converter leaves in text for its row's image number `index`."""
    return f"{_INLINE}{index}\x00"


def inline_marks(text: str) -> list[int]:
    return [int(m.group("index")) for m in _INLINE_RE.finditer(text)]


def without_marks(text: str) -> str:
    return _INLINE_RE.sub(PLACEHOLDER, text)


def has_mark(text: str) -> bool:
    return _INLINE in text


def locate(ref: str, base: str) -> str:
    """Where a reference points, given the data file's URI or path `base`: an s3:// URI,
    a local path, or the data: URL itself. Raises ImageError for what the trainer will not
    fetch."""
    if ref.startswith("data:"):
        return ref
    scheme = re.match(r"^([a-zA-Z][a-zA-Z0-9+.-]*)://", ref)
    if scheme:
        if scheme.group(1).lower() == "s3":
            return ref
        raise ImageError(
            f"{quote(ref)}: {scheme.group(1)}:// is not fetched (an image is a path beside "
            "the data file, an s3:// URI or a data: URL; `finetune submit` uploads local ones)"
        )
    if base.startswith("hf://"):
        raise ImageError(
            f"{quote(ref)}: a path, but the rows come from a Hugging Face dataset (hf://): "
            "its images are read from the rows themselves"
        )
    if base.startswith("s3://"):
        path = PurePosixPath(ref)
        if path.is_absolute() or ".." in path.parts:
            raise ImageError(
                f"{quote(ref)}: a path beside an s3:// data file must stay under its folder "
                "(no leading / and no ..)"
            )
        return f"{base.rsplit('/', 1)[0]}/{path}"
    path = PurePosixPath(ref)
    if path.is_absolute():
        return str(path)
    return str(PurePosixPath(base).parent / path)


def decode_data_url(url: str) -> bytes:
    """The bytes of a base64 data: URL (data:[<type>][;...];base64,<data>)."""
    header, sep, payload = url.partition(",")
    if not sep or not header.endswith(";base64"):
        raise ImageError(f"{quote(url)}: a data: URL must be base64 (data:image/png;base64,...)")
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError(f"{quote(url)}: not valid base64") from None


def fit(width: int, height: int, max_pixels: int | None) -> tuple[int, int]:
    """The size an image is read at under a pixel bound (vision.maxImagePixels): scaled
    down, aspect ratio kept, when it has more pixels; as it is otherwise."""
    if max_pixels is None or width * height <= max_pixels:
        return width, height
    scale = (max_pixels / (width * height)) ** 0.5
    new_width, new_height = max(1, int(width * scale)), max(1, int(height * scale))
    if new_width * new_height > max_pixels:  # a side held at one pixel: trim the other
        if new_width > new_height:
            new_width = max_pixels // new_height
        else:
            new_height = max_pixels // new_width
    return new_width, new_height


def check_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Checked:
    """Whether `data` is an image the trainer can use: a known format, at most
    `max_pixels` (from its header, before anything is decoded), and whole (decoded to the
    last byte). Raises ImageError saying which it is not."""
    from PIL import Image, ImageFile, UnidentifiedImageError

    if not data:
        raise ImageError("empty (0 bytes)")
    # Our bound, not Pillow's process-wide one: the header is read before any decoding.
    image: Any
    try:
        with _pillow_bound_lifted(Image):
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width * height > max_pixels:
                raise ImageError(
                    f"{width} x {height} = {width * height:,} pixels, more than the "
                    f"{max_pixels:,} an image may have: a decompression bomb, or an image to "
                    "scale down before training"
                )
            if image.format not in FORMATS:
                raise ImageError(f"a {image.format} image: one of {', '.join(FORMATS)} is read")
            if ImageFile.LOAD_TRUNCATED_IMAGES:  # someone's global: not for our check
                raise RuntimeError("PIL.ImageFile.LOAD_TRUNCATED_IMAGES is set")
            image.load()
            fmt = str(image.format)
    except UnidentifiedImageError:
        raise ImageError(
            f"not an image ({len(data):,} bytes that no image format reads: {', '.join(FORMATS)})"
        ) from None
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ImageError(f"truncated or corrupt ({error})") from None
    return Checked(
        digest=hashlib.sha256(data).hexdigest(),
        format=fmt,
        width=width,
        height=height,
        size=len(data),
    )


@contextmanager
def _pillow_bound_lifted(image_module: Any) -> Iterator[None]:
    """Pillow's MAX_IMAGE_PIXELS off while our own bound applies: it warns, and refuses at
    twice its value, before our message could say why."""
    saved = image_module.MAX_IMAGE_PIXELS
    image_module.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        image_module.MAX_IMAGE_PIXELS = saved


MAX_BYTES = 64 * 2**20  # an image file larger than any a processor would read whole


@dataclass
class ImageCounts:
    """What the data report says of a dataset's images."""

    count: int = 0  # references in samples
    distinct: int = 0
    bytes: int = 0  # of the distinct ones
    formats: dict[str, int] = field(default_factory=dict)
    largest: tuple[int, int] = (0, 0)

    def render(self) -> str:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.formats.items()))
        width, height = self.largest
        return (
            f"images: {self.count} in samples ({self.distinct} distinct, "
            f"{self.bytes / 1e6:.1f} MB: {kinds}; largest {width} x {height})"
        )


class ImageKeeper:
    """The images of one preparation: each location read and checked once, kept under its
    digest in `folder` (images/<sha256>), counted for the report. A sample's references
    become digests; a bad image is an ImageError naming the reference and the reason."""

    def __init__(
        self, folder: Path, s3_client: Callable[[], Any], max_pixels: int = DEFAULT_MAX_PIXELS
    ):
        """`s3_client`: makes the S3 client when an s3:// image is first read (the data
        file itself may be local)."""
        self.folder = folder
        self._s3_client = s3_client
        self._s3: Any = None
        self.max_pixels = max_pixels
        self.counts = ImageCounts()
        self._seen: dict[str, Checked | ImageError] = {}

    def digests(self, refs: list[str], base: str) -> tuple[list[str], list[str]]:
        """(the digests of `refs`, the problems: `images[i] 'ref': reason`); `base` is the
        data file's URI or path."""
        out: list[str] = []
        problems: list[str] = []
        for i, ref in enumerate(refs):
            try:
                checked = self._checked(locate(ref, base))
            except ImageError as error:
                problems.append(f"images[{i}] {quote(ref)}: {error}")
                continue
            out.append(checked.digest)
        if not problems:
            self.counts.count += len(out)
        return out, problems

    def _checked(self, location: str) -> Checked:
        known = self._seen.get(location)
        if known is None:
            try:
                data = self._read(location)
                known = self._keep(check_image(data, self.max_pixels), data)
            except ImageError as error:
                known = error
            self._seen[location] = known
        if isinstance(known, ImageError):
            raise known
        return known

    def _keep(self, checked: Checked, data: bytes) -> Checked:
        path = self.folder / checked.digest
        if not path.exists():  # two locations may hold the same bytes
            self.folder.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            counts = self.counts
            counts.distinct += 1
            counts.bytes += checked.size
            counts.formats[checked.format] = counts.formats.get(checked.format, 0) + 1
            if checked.width * checked.height > counts.largest[0] * counts.largest[1]:
                counts.largest = (checked.width, checked.height)
        return checked

    def _read(self, location: str) -> bytes:
        if location.startswith("data:"):
            return decode_data_url(location)
        if location.startswith("s3://"):
            return self._read_s3(location)
        path = Path(location)
        try:
            size = path.stat().st_size
            if size > MAX_BYTES:
                raise ImageError(f"{size:,} bytes, more than the {MAX_BYTES:,} an image may have")
            return path.read_bytes()
        except FileNotFoundError:
            raise ImageError(f"not found ({location})") from None
        except IsADirectoryError:
            raise ImageError(f"a directory, not an image file ({location})") from None
        except OSError as error:
            raise ImageError(f"cannot be read ({error.strerror}: {location})") from None

    def _read_s3(self, uri: str) -> bytes:
        from botocore.exceptions import BotoCoreError, ClientError

        bucket, _, key = uri.removeprefix("s3://").partition("/")
        if self._s3 is None:
            self._s3 = self._s3_client()
        try:
            head = self._s3.head_object(Bucket=bucket, Key=key)
            size = int(head.get("ContentLength") or 0)
            if size > MAX_BYTES:
                raise ImageError(f"{size:,} bytes, more than the {MAX_BYTES:,} an image may have")
            body: bytes = self._s3.get_object(Bucket=bucket, Key=key)["Body"].read()
            return body
        except ClientError as error:
            code = str(error.response.get("Error", {}).get("Code", ""))
            status = int(error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
            if code in ("404", "NoSuchKey", "NotFound"):
                raise ImageError(f"not found ({uri})") from None
            if status >= 500:  # the endpoint, not the image: a restart may cure it
                raise DataUnavailableError(f"{uri}: S3 answered {status} ({code})") from None
            raise ImageError(f"cannot be read ({code or error}: {uri})") from None
        except BotoCoreError as error:  # no connection, timeouts: botocore retried already
            raise DataUnavailableError(f"{uri}: {error}") from None
