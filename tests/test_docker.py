"""docker/: the image pins the same torch and detectron2 as the setup script, runs as a
non-root user with mount points for datasets and outputs, and compose.yaml resumes a
preempted run. (No Docker engine here: the files are checked, the image is not built.)"""

import os
import re

import pytest
import yaml

from tests.helpers.config import REPO

DOCKER = os.path.join(REPO, "docker")
WORKDIR = "/opt/d2_efficient_ckpt"


def _read(*parts):
    with open(os.path.join(REPO, *parts)) as f:
        return f.read()


@pytest.fixture(scope="module")
def dockerfile():
    return _read("docker", "Dockerfile")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(_read("docker", "compose.yaml"))["services"]["train"]


def _pins(text, names):
    return {n: re.findall(rf"(?<![\w-]){re.escape(n)}==([\w.+-]+)", text) for n in names}


def test_torch_pins_match_the_setup_constraints(dockerfile):
    names = ("torch", "torchvision")
    in_docker, in_setup = _pins(dockerfile, names), _pins(_read("constraints.txt"), names)
    for name in names:
        assert len(in_docker[name]) == 1 and len(in_setup[name]) == 1, name
        assert in_docker[name] == in_setup[name], f"{name}: Dockerfile and constraints.txt differ"


def test_detectron2_commit_matches_the_setup_script(dockerfile):
    (setup,) = re.findall(r'^D2_COMMIT="([0-9a-f]{40})"', _read("scripts", "setup_env.sh"), re.M)
    docker = re.findall(r"detectron2\.git@([0-9a-f]{40})", dockerfile)
    assert docker == [setup], "docker/Dockerfile and scripts/setup_env.sh pin other commits"


def test_image_runs_as_a_non_root_user_with_mount_points(dockerfile):
    users = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert users and users[-1].split(":")[0] not in ("root", "0")
    (volume,) = re.findall(r"^VOLUME\s+(.+)$", dockerfile, re.M)
    assert sorted(yaml.safe_load(volume)) == [f"{WORKDIR}/datasets", f"{WORKDIR}/output"]


def test_compose_reserves_gpus_mounts_data_and_resumes_after_preemption(compose):
    (gpus,) = compose["deploy"]["resources"]["reservations"]["devices"]
    assert gpus["driver"] == "nvidia" and "gpu" in gpus["capabilities"]
    assert compose["shm_size"]
    targets = sorted(v.rsplit(":", 1)[1] for v in compose["volumes"])
    assert targets == [f"{WORKDIR}/datasets", f"{WORKDIR}/output"]
    assert compose["restart"] == "on-failure"  # exit 75 after a signal restarts; 0 does not
    command = compose["command"]
    assert command[:2] == ["python", "tools/train_net.py"] and "--resume" in command
    signals = command[command.index("CHECKPOINT.SAVE.ON_SIGNAL") + 1]
    assert "SIGTERM" in signals  # what `docker stop` sends
    assert command[command.index("OUTPUT_DIR") + 1] == f"{WORKDIR}/output"
