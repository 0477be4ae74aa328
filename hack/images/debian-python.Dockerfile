# A Debian 12 base for the trainer and operator images where no registry is reachable
# (hack/images.sh): rootfs.tar is made by mmdebstrap from Debian's archive. Python 3.11
# (Debian's), ca-certificates, tini, and gcc + libc6-dev (Triton compiles its launchers at
# run time). /usr/local/bin/python3 as in the python:*-slim images operator/Dockerfile expects.
FROM scratch
ADD rootfs.tar /
# The building machine's own extra certificate authorities (its /usr/local/share/ca-certificates,
# e.g. a proxy's that re-signs PyPI's certificate): the builds' `uv pip install` must trust
# what the machine's own pip trusts. SSL_CERT_FILE: uv reads it (its default is its own roots).
COPY extra-ca/ /usr/local/share/ca-certificates/
RUN update-ca-certificates >/dev/null \
 && ln -s /usr/bin/python3 /usr/local/bin/python3 \
 && ln -s /usr/bin/python3 /usr/local/bin/python
ENV LANG=C.UTF-8 \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
CMD ["bash"]
