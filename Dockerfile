# cxr-ray cluster image: Ray's official GPU image + this package + pinned torch.
#
#   docker build -t ghcr.io/your-org/cxr-ray:0.1.0 .
#   docker push ghcr.io/your-org/cxr-ray:0.1.0
#
# The same image runs the head and every worker (cluster/aws.yaml,
# cluster/kuberay-rayjob.yaml), so driver and workers agree on Ray, Python,
# torch and this package. It holds no data and no credentials: S3 access comes
# from the node's IAM role or a Kubernetes Secret at run time.
# tests/test_cluster_configs.py checks this file against pyproject.toml.

# Ray's image tags are {ray version}-{pyXY}-{platform}; "-gpu" is the alias of
# the CUDA build Ray ships for that release. Keep RAY_VERSION equal to the Ray
# that the cluster configs and your laptop run (`ray job submit` needs it).
ARG RAY_VERSION=2.60.0
FROM rayproject/ray:${RAY_VERSION}-py311-gpu

# ARGs before FROM are not visible after it: re-declare to use the default.
ARG RAY_VERSION
# torch's PyPI wheels bundle their own CUDA runtime (2.14.1 is a CUDA 13.0
# build): GPU nodes need an NVIDIA driver of the R580 series or newer.
ARG TORCH_VERSION=2.14.1
ARG TORCHVISION_VERSION=0.29.1

LABEL org.opencontainers.image.title="cxr-ray" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.description="Chest X-ray deepfake study on Ray" \
      org.opencontainers.image.licenses="Apache-2.0"

ENV PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# rayproject images run as user "ray" (uid 1000, gid 100 "users") with a
# conda Python it owns: nothing below needs root. This stays the last USER, so
# Ray runs as uid 1000; numeric, so that Kubernetes' runAsNonRoot can check it.
USER 1000
# Created as uid 1000 so that pip's in-tree build can write next to the sources
# (a directory made by WORKDIR alone would belong to root).
RUN mkdir -p /home/ray/app
WORKDIR /home/ray/app

# Heavy and rarely changing, so first (cached across code changes): torch and
# torchvision, with Ray held at the base image's version so that pip cannot
# swap it for another 2.x.
RUN pip install --no-cache-dir \
        "torch==${TORCH_VERSION}" \
        "torchvision==${TORCHVISION_VERSION}" \
        "ray[data,train,tune,default]==${RAY_VERSION}"

# Only what the install and the jobs need; .dockerignore keeps the rest out
# of the build context.
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 cxr_ray ./cxr_ray
COPY --chown=1000:100 jobs ./jobs

# The same pins again so that resolving the package cannot move them; then
# fail the build, not the cluster, if Python, Ray or torch drifted anyway
# (-I: import the installed package, not ./cxr_ray).
RUN pip install --no-cache-dir "cxr-ray[dicom] @ file:///home/ray/app" \
        "torch==${TORCH_VERSION}" \
        "torchvision==${TORCHVISION_VERSION}" \
        "ray[data,train,tune,default]==${RAY_VERSION}" \
    && python -I -c "import sys, ray, torch, torchvision, cxr_ray; \
        assert sys.version_info[:2] == (3, 11), sys.version; \
        assert ray.__version__ == '${RAY_VERSION}', ray.__version__; \
        assert torch.__version__.split('+')[0] == '${TORCH_VERSION}', torch.__version__"
