"""Static checks of the deployment files (issue 7).

Nothing here builds an image, starts Ray or talks to a cloud: the Dockerfile,
the autoscaler config, the KubeRay manifests and the ignore files are parsed
and checked against pyproject.toml, against each other, and (where Ray ships
the logic) against Ray's own validators and upload code.
"""

from __future__ import annotations

import re
import shlex
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python 3.11+")

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
DOCKERFILE = REPO / "Dockerfile"
AWS = CLUSTER / "aws.yaml"
RAYJOB = CLUSTER / "kuberay-rayjob.yaml"
SECRET = CLUSTER / "kuberay-secret.example.yaml"
RUNTIME_ENV = CLUSTER / "runtime_env.yaml"

# The S3 variables cxr_ray.storage.S3Settings.from_env() reads.
S3_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_REGION", "CXR_RAY_S3_ENDPOINT"}
CREDENTIAL_ENV = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"}


# ---------------------------------------------------------------- helpers


def pyproject() -> dict:
    with open(REPO / "pyproject.toml", "rb") as f:
        return tomllib.load(f)["project"]


def requirement(name: str) -> Requirement:
    for dep in pyproject()["dependencies"]:
        req = Requirement(dep)
        if req.name == name:
            return req
    raise AssertionError(f"{name} is not a dependency in pyproject.toml")


def load_yaml(path: Path):
    return yaml.safe_load(path.read_text())


def load_all_yaml(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@dataclass(frozen=True)
class Instruction:
    line: int  # first line of the instruction, 1-based
    cmd: str  # upper-case keyword
    args: str  # rest, continuations joined with a space


def parse_dockerfile(text: str) -> list[Instruction]:
    """Docker's line rules, enough for linting: comments, blank lines, `\\` continuations.

    A comment line inside a continued instruction is dropped, as Docker does.
    """
    out: list[Instruction] = []
    parts: list[str] = []
    start = 0
    for n, raw in enumerate(text.splitlines(), 1):
        stripped = raw.strip()
        if stripped.startswith("#") or (not stripped and not parts):
            continue
        if not parts:
            start = n
        if stripped.endswith("\\"):
            parts.append(stripped[:-1].strip())
            continue
        parts.append(stripped)
        joined = " ".join(p for p in parts if p)
        parts = []
        keyword, _, rest = joined.partition(" ")
        out.append(Instruction(start, keyword.upper(), rest.strip()))
    if parts:
        raise ValueError(f"Dockerfile ends inside a continued instruction (line {start})")
    return out


def arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    """ARG NAME=default values (re-declarations without a default keep the first)."""
    defaults: dict[str, str] = {}
    for ins in instructions:
        if ins.cmd == "ARG" and "=" in ins.args:
            name, _, value = ins.args.partition("=")
            defaults.setdefault(name.strip(), value.strip().strip('"'))
    return defaults


def substitute(text: str, values: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2)
        if name not in values:
            raise AssertionError(f"${name} has no ARG default")
        return values[name]

    return re.sub(r"\$\{(\w+)\}|\$(\w+)", repl, text)


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


RAY_TAG = re.compile(r"^(?P<ray>\d+\.\d+\.\d+)-py(?P<py>3\d+)-(?P<platform>gpu|cu\d+)$")


def base_image() -> tuple[str, str]:
    ins = dockerfile()
    froms = [i for i in ins if i.cmd == "FROM"]
    assert len(froms) == 1, "one build stage expected"
    image = substitute(froms[0].args.split()[0], arg_defaults(ins))
    repo, _, tag = image.partition(":")
    return repo, tag


def base_versions() -> tuple[Version, str]:
    """(Ray version, 'X.Y' Python) of the base image tag."""
    repo, tag = base_image()
    m = RAY_TAG.match(tag)
    assert m, f"{repo}:{tag} is not a {{ray}}-py3XX-gpu|cuXXX tag"
    py = m.group("py")
    return Version(m.group("ray")), f"{py[0]}.{py[1:]}"


def pip_installs(instructions: list[Instruction]) -> list[list[str]]:
    """The argument lists of every `pip install` in RUN instructions (ARGs substituted)."""
    values = arg_defaults(instructions)
    calls = []
    for ins in instructions:
        if ins.cmd != "RUN":
            continue
        lexer = shlex.shlex(substitute(ins.args, values), posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        command: list[str] = []
        for tok in [*lexer, ";"]:
            if tok in ("&&", "||", ";", "|", "&"):
                for i in range(len(command)):
                    if command[i : i + 2] == ["pip", "install"] or command[i : i + 2] == ["pip3", "install"]:
                        calls.append(command[i + 2 :])
                        break
                    if command[i : i + 3] == ["-m", "pip", "install"]:
                        calls.append(command[i + 3 :])
                        break
                command = []
            else:
                command.append(tok)
    return calls


def pinned_versions(instructions: list[Instruction]) -> dict[str, set[str]]:
    """name -> versions pinned with == across all pip installs."""
    pins: dict[str, set[str]] = {}
    for args in pip_installs(instructions):
        for tok in args:
            if tok.startswith("-") or "==" not in tok:
                continue
            req = Requirement(tok)
            pins.setdefault(req.name, set()).update(s.version for s in req.specifier if s.operator == "==")
    return pins


def dockerignore_excludes(patterns: list[str], path: str) -> bool:
    """Docker's .dockerignore rule: last matching pattern wins; a match on a parent folder counts."""

    def to_regex(p: str) -> re.Pattern:
        p = p.strip("/")
        out = ""
        i = 0
        while i < len(p):
            if p.startswith("**/", i):
                out += "(?:.*/)?"
                i += 3
            elif p.startswith("**", i):
                out += ".*"
                i += 2
            elif p[i] == "*":
                out += "[^/]*"
                i += 1
            elif p[i] == "?":
                out += "[^/]"
                i += 1
            elif p[i] == "[":
                j = p.index("]", i)
                out += p[i : j + 1]
                i = j + 1
            else:
                out += re.escape(p[i])
                i += 1
        return re.compile(f"^{out}$")

    parts = path.split("/")
    candidates = ["/".join(parts[: k + 1]) for k in range(len(parts))]
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        rx = to_regex(raw[1:] if negate else raw)
        if any(rx.match(c) for c in candidates):
            excluded = not negate
    return excluded


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


# Secrets in text. Built from pieces so this file does not match itself.
_KEY_ID = re.compile(r"\b(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b")
_SECRET_ASSIGN = re.compile(
    r"(?i)(aws_secret_access_key|aws_session_token|secret|password|token)[\"']?\s*[:=]\s*[\"']?"
    r"(?P<value>[A-Za-z0-9/+=]{32,})"
)


def credential_literals(text: str) -> list[str]:
    found = [m.group(0) for m in _KEY_ID.finditer(text)]
    found += [m.group("value") for m in _SECRET_ASSIGN.finditer(text)]
    return found


def deployment_files() -> list[Path]:
    files = [DOCKERFILE, REPO / ".dockerignore", REPO / ".rayignore", *sorted(CLUSTER.iterdir())]
    docs = REPO / "docs" / "cluster.md"
    if docs.exists():
        files.append(docs)
    return [f for f in files if f.is_file()]


# ---------------------------------------------------------------- parser self-checks


def test_dockerfile_parser_joins_continuations_and_drops_comments():
    text = (
        "# syntax=docker/dockerfile:1\n"
        "ARG V=1.2.3\n"
        "FROM img:${V}-py311-gpu\n"
        "\n"
        "RUN pip install --no-cache-dir \\\n"
        "    # a comment inside the instruction\n"
        '    "a==1" \\\n'
        "    b==2\n"
        "USER 1000\n"
    )
    ins = parse_dockerfile(text)
    assert [i.cmd for i in ins] == ["ARG", "FROM", "RUN", "USER"]
    assert ins[2].line == 5
    assert ins[2].args == 'pip install --no-cache-dir "a==1" b==2'
    assert substitute(ins[1].args, arg_defaults(ins)) == "img:1.2.3-py311-gpu"
    assert pinned_versions(ins) == {"a": {"1"}, "b": {"2"}}
    with pytest.raises(ValueError):
        parse_dockerfile("RUN echo \\\n")


def test_dockerignore_matcher_follows_docker_rules():
    pats = ["*", "!cxr_ray", "**/__pycache__"]
    assert dockerignore_excludes(pats, "data/x.parquet")
    assert not dockerignore_excludes(pats, "cxr_ray/storage.py")
    assert dockerignore_excludes(pats, "cxr_ray/data/__pycache__/x.pyc")


def test_credential_detector_finds_planted_keys():
    key_id = "AKIA" + "Q" * 16
    secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "0123456789"
    assert credential_literals(f"aws_access_key_id = {key_id}") == [key_id]
    assert credential_literals(f"AWS_SECRET_ACCESS_KEY: {secret}") == [secret]
    assert credential_literals("AWS_SECRET_ACCESS_KEY: EXAMPLE-REPLACE-ME") == []


# ---------------------------------------------------------------- Dockerfile


def test_base_image_is_official_ray_gpu_image_with_pinned_tag():
    repo, tag = base_image()
    assert repo in ("rayproject/ray", "docker.io/rayproject/ray"), f"base image {repo}: use rayproject/ray (not ray-ml)"
    assert tag and "latest" not in tag and "nightly" not in tag, f"unpinned base tag {tag!r}"
    m = RAY_TAG.match(tag)
    assert m, f"tag {tag!r} is not {{ray}}-py3XX-gpu|cuXXX (a GPU build with explicit Python)"


def test_base_image_ray_and_python_agree_with_pyproject():
    ray_version, python = base_versions()
    assert requirement("ray").specifier.contains(ray_version), (
        f"base image Ray {ray_version} is outside pyproject's {requirement('ray')}"
    )
    assert SpecifierSet(pyproject()["requires-python"]).contains(Version(python)), (
        f"base image Python {python} is not allowed by requires-python {pyproject()['requires-python']}"
    )


def test_dockerfile_pins_torch_ray_within_pyproject():
    ins = dockerfile()
    pins = pinned_versions(ins)
    ray_version, _ = base_versions()
    for name in ("torch", "torchvision"):
        assert name in pins and len(pins[name]) == 1, f"{name} must be pinned to one version, got {pins.get(name)}"
        (version,) = pins[name]
        assert requirement(name).specifier.contains(Version(version)), (
            f"{name}=={version} is outside pyproject's {requirement(name)}"
        )
    # pip must keep the Ray of the base image.
    assert pins.get("ray") == {str(ray_version)}, f"ray pins {pins.get('ray')} != base image Ray {ray_version}"


def test_dockerfile_installs_this_package_and_labels_its_version():
    ins = dockerfile()
    args = [tok for call in pip_installs(ins) for tok in call]
    name = pyproject()["name"]
    assert any(Requirement(t).name == name for t in args if not t.startswith("-") and "@" in t), (
        f"no `pip install '{name}[...] @ file://...'` in the Dockerfile"
    )
    labels = " ".join(i.args for i in ins if i.cmd == "LABEL")
    m = re.search(r'org\.opencontainers\.image\.version="([^"]+)"', labels)
    assert m and m.group(1) == pyproject()["version"], "image version label must equal pyproject version"


def test_dockerfile_follows_hadolint_rules():
    ins = dockerfile()
    cmds = [i.cmd for i in ins]
    # DL3002: the last USER is not root.
    users = [i for i in ins if i.cmd == "USER"]
    assert users, "no USER: the image would run as whatever the base says"
    last_user = users[-1].args.split(":")[0]
    assert last_user not in ("root", "0"), "last USER must be non-root"
    # Non-root before any RUN/COPY of ours, so that files and installs belong to it.
    first_user = cmds.index("USER")
    assert all(c not in ("RUN", "COPY") for c in cmds[:first_user]), "USER must come before RUN/COPY"
    # DL3020: COPY, not ADD, for local files (ADD only for remote URLs).
    for i in ins:
        if i.cmd == "ADD":
            assert re.match(r"(--\S+\s+)*https?://", i.args), f"line {i.line}: ADD of a local file; use COPY"
    # Files copied in belong to the runtime user, not root.
    for i in ins:
        if i.cmd == "COPY" and "--from=" not in i.args:
            assert "--chown=" in i.args, f"line {i.line}: COPY without --chown leaves root-owned files"
    # DL3000 / DL3003: absolute WORKDIR, no `cd` in RUN.
    workdirs = [i for i in ins if i.cmd == "WORKDIR"]
    assert workdirs and all(w.args.startswith("/") for w in workdirs)
    for i in ins:
        if i.cmd == "RUN":
            assert not re.search(r"(^|&&|;)\s*cd\s", i.args), f"line {i.line}: use WORKDIR instead of cd"
            assert "sudo " not in i.args, f"line {i.line}: sudo in RUN"
    # DL3042 / DL3013: pip without cache, every requirement pinned (or a named local build).
    calls = pip_installs(ins)
    assert calls, "no pip install found"
    for call in calls:
        assert "--no-cache-dir" in call, f"pip install {call} without --no-cache-dir"
        for tok in call:
            if tok.startswith("-"):
                continue
            req = Requirement(tok)
            pinned = any(s.operator == "==" for s in req.specifier) or (req.url or "").startswith("file://")
            assert pinned, f"unpinned pip requirement {tok!r}"
    # No MAINTAINER (deprecated), exactly one CMD/ENTRYPOINT at most.
    assert "MAINTAINER" not in cmds
    assert cmds.count("CMD") <= 1 and cmds.count("ENTRYPOINT") <= 1


def test_dockerfile_holds_no_credentials():
    ins = dockerfile()
    secretish = re.compile(r"(?i)(SECRET|PASSWORD|TOKEN|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL)")
    for i in ins:
        if i.cmd in ("ENV", "ARG"):
            names = re.findall(r"(\w+)=", i.args) or [i.args.split()[0]]
            for name in names:
                assert not secretish.search(name), f"line {i.line}: {i.cmd} {name} would bake a secret into the image"
    text = DOCKERFILE.read_text()
    assert not any(v in text for v in CREDENTIAL_ENV), "credential variables have no place in the Dockerfile"
    assert credential_literals(text) == []


def test_dockerfile_copies_are_in_the_build_context():
    """What the Dockerfile COPYs is not dropped by .dockerignore (else the build fails)."""
    pats = dockerignore_patterns()
    for i in dockerfile():
        if i.cmd != "COPY":
            continue
        sources = [t for t in shlex.split(i.args) if not t.startswith("--")][:-1]
        for src in sources:
            assert not dockerignore_excludes(pats, src.rstrip("/")), f"COPY {src} is excluded by .dockerignore"


@pytest.mark.parametrize(
    "path",
    [
        "data/chest_xray/train/NORMAL/a.jpeg",
        "runs/study/report.html",
        ".venv/bin/python",
        ".git/config",
        ".env",
        "cxr_ray/__pycache__/storage.cpython-311.pyc",
        "cxr_ray.egg-info/PKG-INFO",
        "benchmarks/results/timing.json",
        "tests/conftest.py",
    ],
)
def test_dockerignore_keeps_out(path):
    assert dockerignore_excludes(dockerignore_patterns(), path)


# ---------------------------------------------------------------- cluster/aws.yaml


def aws() -> dict:
    return load_yaml(AWS)


def node_types() -> dict[str, dict]:
    return aws()["available_node_types"]


def gpu_worker_types() -> dict[str, dict]:
    head = aws()["head_node_type"]
    return {k: v for k, v in node_types().items() if k != head and v["resources"].get("GPU", 0) > 0}


# GPUs per instance for the families a config here may use (AWS instance specs).
GPUS_PER_INSTANCE = {
    "g5.xlarge": 1, "g5.2xlarge": 1, "g5.4xlarge": 1, "g5.8xlarge": 1, "g5.16xlarge": 1,
    "g5.12xlarge": 4, "g5.24xlarge": 4, "g5.48xlarge": 8,
    "g6.xlarge": 1, "g6.2xlarge": 1, "g6.4xlarge": 1, "g6.8xlarge": 1, "g6.16xlarge": 1,
    "g6.12xlarge": 4, "g6.24xlarge": 4, "g6.48xlarge": 8,
    "g4dn.xlarge": 1, "g4dn.2xlarge": 1, "g4dn.12xlarge": 4,
    "p3.2xlarge": 1, "p3.8xlarge": 4, "p4d.24xlarge": 8, "p5.48xlarge": 8,
}  # fmt: skip


def test_aws_config_passes_rays_own_validation():
    util = pytest.importorskip("ray.autoscaler._private.util")
    import copy

    util.validate_config(util.prepare_config(copy.deepcopy(aws())))


def test_aws_head_is_cpu_only():
    cfg = aws()
    head = node_types()[cfg["head_node_type"]]
    assert head["resources"].get("GPU") == 0, "head must declare GPU: 0 so no GPU work lands on it"
    assert "CPU" in head["resources"], "declare the head's CPU explicitly"
    assert head["node_config"]["InstanceType"].split(".")[0] not in {t.split(".")[0] for t in GPUS_PER_INSTANCE}


def test_aws_gpu_worker_types_scale_from_zero():
    gpus = gpu_worker_types()
    enabled = {k: v for k, v in gpus.items() if v["max_workers"] > 0}
    assert len(enabled) >= 2, f"need a single-GPU and a multi-GPU worker type, got {sorted(enabled)}"
    counts = {v["resources"]["GPU"] for v in enabled.values()}
    assert 1 in counts and max(counts) > 1, f"GPU counts per node {counts}: want 1 and more than 1"
    for name, nt in gpus.items():
        assert nt["min_workers"] == 0, f"{name}: min_workers must be 0 (no idle GPUs)"
        itype = nt["node_config"]["InstanceType"]
        assert itype in GPUS_PER_INSTANCE, f"{name}: {itype} is not a known GPU instance type"
        assert nt["resources"]["GPU"] == GPUS_PER_INSTANCE[itype], (
            f"{name}: {itype} has {GPUS_PER_INSTANCE[itype]} GPUs"
        )
    assert aws()["max_workers"] >= max(v["max_workers"] for v in enabled.values())


def test_aws_offers_spot_and_idle_timeout():
    spot = [
        k
        for k, v in node_types().items()
        if v["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"
    ]
    assert spot, "no spot node type"
    assert all(node_types()[k]["resources"].get("GPU", 0) > 0 for k in spot)
    assert 0 < aws()["idle_timeout_minutes"] <= 60


def test_aws_nodes_use_iam_profiles_and_the_project_image():
    cfg = aws()
    for name, nt in node_types().items():
        profile = nt["node_config"].get("IamInstanceProfile")
        assert profile and (profile.get("Name") or profile.get("Arn")), f"{name}: no IamInstanceProfile"
    image = cfg["docker"]["image"]
    repo, _, tag = image.rpartition(":")
    assert repo.endswith("/cxr-ray"), image
    assert tag == pyproject()["version"], f"image tag {tag} != package version {pyproject()['version']}"
    assert cfg["provider"]["type"] == "aws"
    assert "cache_stopped_nodes" in cfg["provider"]


def shm_bytes(options: list[str]) -> int | None:
    for opt in options:
        m = re.search(r"--shm-size[= ]'?(\d+)([bkmg]?)", opt)
        if m:
            return int(m.group(1)) * {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2)]
    return None


def test_aws_every_node_gets_enough_shared_memory():
    cfg = aws()
    docker = cfg["docker"]
    for name, nt in node_types().items():
        own = docker.get("head_run_options", []) if name == cfg["head_node_type"] else None
        if own is None:
            own = nt.get("docker", {}).get("worker_run_options", docker.get("worker_run_options", []))
        size = shm_bytes(docker.get("run_options", []) + own)
        assert size is not None, f"{name}: no --shm-size (Docker's default /dev/shm is 64 MB)"
        assert size >= 4 * 2**30, f"{name}: /dev/shm of {size} bytes is too small for the object store"


def test_aws_start_commands_and_region():
    cfg = aws()
    head = " ".join(cfg["head_start_ray_commands"])
    assert "ray start --head" in head and "--port=6379" in head
    assert "--autoscaling-config=~/ray_bootstrap_config.yaml" in head
    assert "--dashboard-host=0.0.0.0" in head
    worker = " ".join(cfg["worker_start_ray_commands"])
    assert "--address=$RAY_HEAD_IP:6379" in worker
    # The image has everything: no per-node installs that could drift from it.
    for key in ("setup_commands", "head_setup_commands", "worker_setup_commands"):
        assert not any("pip install" in c for c in cfg.get(key, [])), key
    # S3Settings.from_env() needs the region inside the containers.
    env = " ".join(cfg["docker"]["run_options"])
    assert f"AWS_REGION={cfg['provider']['region']}" in env


def test_aws_nodes_use_rays_token_authentication():
    cfg = aws()
    assert "--env RAY_AUTH_MODE=token" in cfg["docker"]["run_options"]
    assert cfg["file_mounts"] == {"~/.ray/auth_token": "~/.ray/auth_token"}, "only the token file is copied to the nodes"


# ---------------------------------------------------------------- KubeRay


def rayjob() -> dict:
    docs = [d for d in load_all_yaml(RAYJOB) if d.get("kind") == "RayJob"]
    assert len(docs) == 1
    return docs[0]


def example_secret() -> dict:
    assert not any(d.get("kind") == "Secret" for d in load_all_yaml(RAYJOB)), "keep the Secret out of the RayJob file"
    docs = [d for d in load_all_yaml(SECRET) if d.get("kind") == "Secret"]
    assert len(docs) == 1, "one example Secret expected"
    return docs[0]


def pod_specs() -> dict[str, dict]:
    spec = rayjob()["spec"]["rayClusterSpec"]
    pods = {"head": spec["headGroupSpec"]["template"]["spec"]}
    for group in spec["workerGroupSpecs"]:
        pods[group["groupName"]] = group["template"]["spec"]
    return pods


def gpus(container: dict, kind: str = "limits") -> int:
    return int(container.get("resources", {}).get(kind, {}).get("nvidia.com/gpu", 0))


def test_rayjob_lifecycle_and_autoscaling():
    job = rayjob()
    assert job["apiVersion"] == "ray.io/v1"
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] >= 0
    cluster = spec["rayClusterSpec"]
    assert cluster["enableInTreeAutoscaling"] is True
    ray_version, _ = base_versions()
    assert cluster["rayVersion"] == str(ray_version), "rayVersion must equal the image's Ray"


def test_rayjob_uses_token_auth_and_submits_without_a_second_image_pull():
    spec = rayjob()["spec"]
    assert spec["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert spec["submissionMode"] == "HTTPMode"  # no submitter pod
    assert "KubeRay operator v1.5.1 or newer" in RAYJOB.read_text(), "state the KubeRay version authOptions needs"
    readme = (REPO / "README.md").read_text()
    assert "RAY_AUTH_MODE=disabled" not in readme and "export RAY_AUTH_MODE=token" in readme


def test_rayjob_entrypoint_runs_the_full_study_on_s3():
    entry = rayjob()["spec"]["entrypoint"]
    args = shlex.split(entry)
    assert args[0] == "python" and args[1].endswith("jobs/full_study.py")
    assert args[args.index("--profile") + 1] == "full"
    assert args[args.index("--storage") + 1].startswith("s3://")
    assert "--data" in args, "profile full needs --data"


def test_rayjob_head_has_no_gpu_and_gpu_groups_scale_from_zero():
    cluster = rayjob()["spec"]["rayClusterSpec"]
    head = cluster["headGroupSpec"]["template"]["spec"]
    assert all(gpus(c) == 0 and gpus(c, "requests") == 0 for c in head["containers"])
    gpu_groups = [
        g for g in cluster["workerGroupSpecs"] if any(gpus(c) > 0 for c in g["template"]["spec"]["containers"])
    ]
    assert len(gpu_groups) >= 1
    for g in gpu_groups:
        assert g["minReplicas"] == 0, f"{g['groupName']}: minReplicas must be 0"
        assert g["maxReplicas"] > 0
        assert g.get("replicas", 0) <= g["maxReplicas"]
        for c in g["template"]["spec"]["containers"]:
            # Extended resources: requests, if given, must equal limits.
            assert gpus(c, "requests") in (0, gpus(c)), f"{g['groupName']}: GPU requests != limits"


def test_rayjob_pods_use_the_image_shm_and_non_root():
    expected = aws()["docker"]["image"]
    user = next(i for i in reversed(dockerfile()) if i.cmd == "USER").args.split(":")[0]
    assert user.isdigit(), f"Dockerfile USER {user!r}: numeric, so that runAsNonRoot can verify it"
    user = int(user)
    for name, pod in pod_specs().items():
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == user, f"{name}: runAsUser != Dockerfile USER"
        mem_volumes = {v["name"] for v in pod.get("volumes", []) if v.get("emptyDir", {}).get("medium") == "Memory"}
        for c in pod["containers"]:
            assert c["image"] == expected, f"{name}: {c['image']} != {expected} (aws.yaml)"
            shm = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/dev/shm"]
            assert shm and shm[0]["name"] in mem_volumes, f"{name}: /dev/shm must be a Memory emptyDir"


def test_rayjob_s3_settings_come_from_the_secret():
    secret = example_secret()
    secret_keys = set(secret.get("stringData", {}))
    for name, pod in pod_specs().items():
        for c in pod["containers"]:
            env = {e["name"]: e for e in c.get("env", [])}
            from_secret = {
                n
                for n, e in env.items()
                if e.get("valueFrom", {}).get("secretKeyRef", {}).get("name") == secret["metadata"]["name"]
            }
            env_from = [s["secretRef"]["name"] for s in c.get("envFrom", []) if "secretRef" in s]
            if secret["metadata"]["name"] in env_from:
                continue
            assert S3_ENV <= from_secret, f"{name}: {sorted(S3_ENV - from_secret)} not from the Secret"
            for n in S3_ENV:
                assert "value" not in env[n], f"{name}: {n} is a literal"
                ref = env[n]["valueFrom"]["secretKeyRef"]
                assert ref["key"] in secret_keys, f"{name}: Secret has no key {ref['key']}"


def test_example_secret_holds_placeholders_only():
    secret = example_secret()
    assert secret["kind"] == "Secret" and "data" not in secret, "use stringData placeholders, not base64 data"
    values = secret["stringData"]
    assert S3_ENV <= set(values)
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert "REPLACE" in values[key] or "EXAMPLE" in values[key], f"{key} must be a marked placeholder"
    assert SECRET.read_text().startswith("# EXAMPLE"), "say at the top that the Secret is an example"


# ---------------------------------------------------------------- runtime env and uploads


def test_runtime_env_is_valid_and_carries_no_credentials():
    cfg = load_yaml(RUNTIME_ENV)
    assert set(cfg) <= {"working_dir", "excludes", "env_vars", "py_modules", "pip", "uv", "conda", "config"}
    from ray.runtime_env import RuntimeEnv

    RuntimeEnv(**cfg)  # Ray's own type checks
    assert cfg["working_dir"] == "."
    env = cfg.get("env_vars", {})
    assert not (CREDENTIAL_ENV & set(env)), "credentials must come from IAM roles / Secrets, not runtime_env"
    assert set(env) <= S3_ENV | {"PYTHONUNBUFFERED"}


def _working_dir_upload(tmp_path: Path, excludes: list[str]) -> set[str]:
    """Files Ray would upload for `--working-dir` of a tree shaped like this repo."""
    packaging = pytest.importorskip("ray._private.runtime_env.packaging")
    root = tmp_path / "repo"
    files = [
        "pyproject.toml",
        "README.md",
        "cxr_ray/storage.py",
        "cxr_ray/data/ingest.py",
        "cxr_ray/sample/chest_xray/train/NORMAL/a.jpeg",
        "jobs/full_study.py",
        "cluster/aws.yaml",
        "docs/cluster.md",
        "benchmarks/throughput.py",
        "data/chest_xray/train/NORMAL/b.jpeg",
        "runs/study/data/real-64/part-0.parquet",
        "runs/study/report/index.html",
        "benchmarks/results/timing.json",
        ".venv/bin/python",
        ".git/HEAD",
        "cxr_ray/__pycache__/storage.cpython-311.pyc",
        "model.pt",
        ".env",
    ]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_text("x")
    # Ray applies .gitignore too: test the pair the repo really has.
    for ignore in (".rayignore", ".gitignore"):
        if (REPO / ignore).exists():
            (root / ignore).write_text((REPO / ignore).read_text())
    out = tmp_path / "pkg.zip"
    packaging._zip_files(str(root), excludes, str(out), include_gitignore=True)
    with zipfile.ZipFile(out) as z:
        return {n for n in z.namelist() if not n.endswith("/")}


KEEP = {
    "pyproject.toml",
    "cxr_ray/storage.py",
    "cxr_ray/data/ingest.py",
    "cxr_ray/sample/chest_xray/train/NORMAL/a.jpeg",
    "jobs/full_study.py",
    "cluster/aws.yaml",
    "benchmarks/throughput.py",
}
DROP = {
    "data/chest_xray/train/NORMAL/b.jpeg",
    "runs/study/data/real-64/part-0.parquet",
    "runs/study/report/index.html",
    "benchmarks/results/timing.json",
    ".venv/bin/python",
    ".git/HEAD",
    "cxr_ray/__pycache__/storage.cpython-311.pyc",
    "model.pt",
    ".env",
}


def test_rayignore_keeps_data_runs_venv_out_of_uploads(tmp_path):
    uploaded = _working_dir_upload(tmp_path, excludes=[])
    assert KEEP <= uploaded, f"missing from upload: {sorted(KEEP - uploaded)}"
    assert not (DROP & uploaded), f"uploaded anyway: {sorted(DROP & uploaded)}"


def test_runtime_env_excludes_do_not_drop_code(tmp_path):
    uploaded = _working_dir_upload(tmp_path, excludes=load_yaml(RUNTIME_ENV).get("excludes", []))
    assert KEEP <= uploaded, f"runtime_env excludes drop {sorted(KEEP - uploaded)}"
    assert not (DROP & uploaded)


# ---------------------------------------------------------------- everything


def test_every_cluster_yaml_parses():
    files = sorted(CLUSTER.glob("*.yaml"))
    assert {AWS, RAYJOB, RUNTIME_ENV} <= set(files)
    for f in files:
        assert load_all_yaml(f), f"{f.name} is empty"


def test_no_credential_literals_in_deployment_files():
    for f in deployment_files():
        found = credential_literals(f.read_text())
        assert not found, f"{f.relative_to(REPO)} holds what looks like a credential: {found}"


def test_docs_commands_name_existing_files():
    docs = REPO / "docs" / "cluster.md"
    text = docs.read_text()
    for cmd in (
        "ray up cluster/aws.yaml",
        "ray down cluster/aws.yaml",
        "kubectl apply -f cluster/kuberay-rayjob.yaml",
        "RAY_AUTH_MODE=token ray start --head",
        "ray get-auth-token --generate",
    ):
        assert cmd in text, f"docs/cluster.md lacks `{cmd}`"
    for ref in set(re.findall(r"\bcluster/[\w.-]+\.yaml\b", text)):
        assert (REPO / ref).exists(), f"docs/cluster.md names {ref}, which does not exist"
