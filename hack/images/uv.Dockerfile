# uv's binaries, as ghcr.io/astral-sh/uv:<version> ships them (/uv, /uvx), from the uv that
# `make install` pinned (hack/images.sh), for machines that cannot reach ghcr.io.
FROM scratch
COPY uv uvx /
