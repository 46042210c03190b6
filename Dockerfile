# agentsight in a container, from the distributable wheel.
#
#   scripts/build-wheel.sh                      # writes dist/agentsight-*-manylinux_*.whl
#   docker build -t agentsight .
#   docker run --rm --privileged --pid=host \
#       -v /sys/kernel/btf:/sys/kernel/btf:ro -v /sys/kernel/tracing:/sys/kernel/tracing \
#       -v agentsight-cache:/var/cache/agentsight agentsight trace
#
# The image holds what tests/test_wheel.py's minimal root filesystem holds
# (Debian bookworm, python3 and python3-venv; curl there only makes the test's
# request) and installs the wheel the same way: into a venv, pip taking the
# dependencies from the wheel's metadata. No libbpf, libelf, compiler or
# kernel headers: the wheel carries libbpf, libelf, libz and the BPF objects.
# With the otlp extra: `trace --otlp`, as deploy/kubernetes/daemonset.yaml runs it.
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
COPY dist/agentsight-*-manylinux_*_x86_64.whl /tmp/
RUN python3 -m venv /opt/agentsight \
    && /opt/agentsight/bin/pip install --no-cache-dir "$(echo /tmp/agentsight-*.whl)[otlp]" \
    && rm /tmp/agentsight-*.whl
# Analyses of stripped TLS executables are kept here between runs.
ENV PATH=/opt/agentsight/bin:$PATH AGENTSIGHT_CACHE_DIR=/var/cache/agentsight
VOLUME /var/cache/agentsight
ENTRYPOINT ["agentsight"]
CMD ["--help"]
