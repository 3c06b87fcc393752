"""cxr-ray: distributed chest X-ray deepfake study and archive scanning on Ray."""

def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cxr-ray")
    except PackageNotFoundError:  # a source tree that was never installed
        return "0+unknown"


__version__ = _installed_version()
