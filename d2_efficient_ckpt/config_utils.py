"""Config merging whose errors say which file or option is wrong and how to fix it.

yacs reports a yaml value of the wrong type as, e.g., ``Type mismatch (<class 'tuple'> vs.
<class 'str'>) with values (() vs. toy_train) for config key: DATASETS.TRAIN``, which names
neither the file nor the fix; :func:`merge_cfg_safely` rewrites such errors. A mistyped key,
in a file or on the command line, becomes one line that names it and the closest real keys.
"""

import difflib
import os
import re
from typing import List, Optional, Sequence

from detectron2.config import CfgNode

from .errors import UserError

__all__ = [
    "ConfigError",
    "ConfigFileNotFoundError",
    "ConfigKeyError",
    "closest_keys",
    "merge_cfg_safely",
    "load_config",
]

_TYPE_MISMATCH = re.compile(
    r"Type mismatch \((?P<old_type>.*?) vs\. (?P<new_type>.*?)\) with values "
    r"\((?P<old>.*) vs\. (?P<new>.*)\) for config key: (?P<key>\S+)",
    re.DOTALL,
)
# yacs: "Non-existent config key: X" (KeyError, files) or "Non-existent key: X" (assertion, opts).
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (?P<key>\S+)")
_DATASET_LIST_KEYS = ("DATASETS.TRAIN", "DATASETS.TEST")


class ConfigError(UserError, ValueError):
    """A config file or command-line override that cannot be merged.

    The message names the file or option and the fix. Tools report it as bad input.
    """


class ConfigKeyError(ConfigError, KeyError):
    """A config key that does not exist (still a ``KeyError``, as yacs raises)."""


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file does not exist (still a ``FileNotFoundError``)."""


def _message(e: BaseException) -> str:
    # str(KeyError("x")) is "'x'"; the argument itself reads better.
    if isinstance(e, KeyError) and len(e.args) == 1:
        return str(e.args[0])
    return str(e)


def _config_keys(cfg: CfgNode, prefix: str = "") -> List[str]:
    out = []
    for name, value in cfg.items():
        key = prefix + name
        out.append(key)
        if isinstance(value, CfgNode):
            out.extend(_config_keys(value, key + "."))
    return out


def closest_keys(cfg: CfgNode, key: str, n: int = 3) -> List[str]:
    """The real config keys closest to ``key`` (at most ``n``, best first), for typos.

    Keys next to the mistyped one (same parent node) are preferred; when none is close, any
    key of the config may be (a key under the wrong node). The comparison ignores case.

    Args:
        cfg: the config the key was merged into.
        key: a dotted key that the config lacks, e.g. ``SOLVER.MAX_ITR``.
        n: how many to return.
    """
    by_upper = {k.upper(): k for k in _config_keys(cfg)}
    wanted = key.upper()
    parent = wanted.rsplit(".", 1)[0] + "." if "." in wanted else ""
    # Leaf names are compared among siblings, so that the shared parent does not make every
    # sibling look close.
    leaves = [k[len(parent) :] for k in by_upper if k.startswith(parent)]
    leaves = [leaf for leaf in leaves if "." not in leaf]
    near = [
        parent + leaf
        for leaf in difflib.get_close_matches(wanted[len(parent) :], leaves, n=n, cutoff=0.7)
    ]
    near = near or difflib.get_close_matches(wanted, list(by_upper), n=n, cutoff=0.6)
    return [by_upper[k] for k in near]


def _unknown_key_message(cfg: CfgNode, key: str, source: str) -> str:
    close = closest_keys(cfg, key)
    if close:
        hint = "Did you mean " + " or ".join(close) + "?"
    else:
        hint = "No key is close: check its spelling and that the config's add_*_config ran."
    return f"In {source}: {key} is not a config key. {hint}"


def _dataset_list_fix(key: str, value: str, source: str, from_file: bool) -> str:
    names = [v.strip().strip("'\"") for v in value.strip("()[] ").split(",")]
    names = [n for n in names if n]
    as_tuple = "(" + ", ".join(f'"{n}"' for n in names) + ("," if len(names) == 1 else "") + ")"
    leaf = key.split(".")[-1]
    comma = " (the trailing comma makes it a tuple)" if len(names) == 1 else ""
    if from_file:
        how = f"write {leaf}: {as_tuple} under DATASETS{comma}"
    else:
        cli = "(" + ", ".join(f"'{n}'" for n in names) + ("," if len(names) == 1 else "") + ")"
        how = f'write {key} "{cli}" on the command line, quoted{comma}'
    return (
        f"{key} must be a tuple of dataset names, but in {source} it is the bare string "
        f"{value!r}. To fix it, {how}."
    )


def _explain(cfg: CfgNode, e: Exception, source: str, from_file: bool) -> Exception:
    """Build the exception to raise instead of ``e``, with ``source`` and a fix added."""
    msg = _message(e)
    unknown = _UNKNOWN_KEY.search(msg) if isinstance(e, (KeyError, AssertionError)) else None
    if unknown:
        return ConfigKeyError(_unknown_key_message(cfg, unknown.group("key"), source))
    match = _TYPE_MISMATCH.search(msg) if isinstance(e, ValueError) else None
    if match and match.group("key") in _DATASET_LIST_KEYS and "str" in match.group("new_type"):
        fix = _dataset_list_fix(match.group("key"), match.group("new"), source, from_file)
        return ConfigError(fix)
    if match:
        return ConfigError(
            f"In {source}: {match.group('key')} must be of type {match.group('old_type')} like "
            f"its default {match.group('old')}, got {match.group('new')!r} of type "
            f"{match.group('new_type')}. Change the value to that type."
        )
    text = f"In {source}: {msg}"
    if isinstance(e, KeyError):
        return ConfigKeyError(text)
    if type(e) in (ValueError, AssertionError):  # yacs asserts on unknown keys in opts
        return ConfigError(text)
    # yaml parse errors and the like: a config that cannot be read is a bad value.
    return ConfigError(f"{text} ({type(e).__name__})")


def merge_cfg_safely(
    cfg: CfgNode, config_file: Optional[str], opts: Optional[Sequence[str]] = None
) -> CfgNode:
    """Merge a yaml file and then command-line overrides into ``cfg``, with clear errors.

    Args:
        cfg: the config to merge into, in place (e.g. ``get_cfg()`` extended by
            ``add_efficient_ckpt_config``).
        config_file: path of a yaml config, resolved against the current working directory;
            ``None`` or ``""`` merges no file.
        opts: ``["KEY", "VALUE", ...]`` overrides, as detectron2's argument parser collects
            them; ``None`` or empty merges none.

    Returns:
        ``cfg``, for chaining.

    Raises:
        ConfigFileNotFoundError: ``config_file`` does not exist.
        ConfigError: a value has the wrong type; for ``DATASETS.TRAIN``/``DATASETS.TEST`` given
            as a bare string the message shows the tuple to write instead. Other errors from
            merging are re-raised as ``ConfigError`` (``ConfigKeyError`` for an unknown key,
            naming the closest real keys) with the config file or "command-line opts" named in
            the message, chained to the original.
    """
    if config_file:
        if not os.path.isfile(config_file):
            raise ConfigFileNotFoundError(
                f"Config file '{config_file}' does not exist (relative paths are resolved "
                f"against the current working directory '{os.getcwd()}'). Check --config-file."
            )
        try:
            cfg.merge_from_file(config_file)
        except Exception as e:
            raise _explain(cfg, e, f"config file '{config_file}'", from_file=True) from e
    if opts:
        try:
            cfg.merge_from_list(list(opts))
        except Exception as e:
            raise _explain(cfg, e, "command-line opts", from_file=False) from e
    return cfg


def load_config(config_file: Optional[str], opts: Optional[Sequence[str]] = None) -> CfgNode:
    """A detectron2 config with this plugin's keys, merged from a file and ``KEY VALUE`` opts.

    Args:
        config_file: a yaml config; ``None`` or ``""`` for defaults only.
        opts: command-line overrides, e.g. ``["SOLVER.MAX_ITER", "100"]``.

    Returns:
        A new, mutable config.

    Raises:
        ConfigError: as :func:`merge_cfg_safely`.
    """
    from detectron2.config import get_cfg

    from .config import add_efficient_ckpt_config

    cfg = add_efficient_ckpt_config(get_cfg())
    merge_cfg_safely(cfg, config_file or None, list(opts or []))
    return cfg
