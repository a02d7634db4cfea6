"""One table of option names (``registry.OPTION_ALIASES``): every alias works in every front end.

Each row of ``CASES`` gives a mechanism, an option under one of its names, and the constructor option
it must reach. Every row is checked through the SDK builder, the SDK config (TOML), the CLI's config
file, the CLI itself (``attnkit compute`` in a subprocess, the option as a flag) and the server (an
in-process TestClient); the oracle is the built mechanism's own ``options()``. A second table checks
that one option under two names is an error naming both, in every front end.
"""

from __future__ import annotations

import json
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from test_cli_support import Runner, one_error_line

from attnkit import ConfigError
from attnkit.cli import _common
from attnkit.cli.config import load_config
from attnkit.mechanisms import registry
from attnkit.sdk import AttentionBuilder, AttentionConfig

#: the other options a mechanism needs (under canonical names)
BASE: dict[str, dict[str, Any]] = {
    "multi_head": {"model_dim": 8},
    "cross": {"query_dim": 8, "key_dim": 6},
    "flash": {},
    "hyperbolic": {"dim": 4},
    "linear": {"dim": 4},
    "local_global": {},
    "moe": {},
}


def _cases() -> list[tuple[str, str, Any, str]]:
    """(mechanism, name as given, value, constructor option it must reach)."""
    rows: list[tuple[str, str, Any, str]] = []
    for name in OPTION_ALIASES_DIM:
        rows += [("multi_head", name, 16, "model_dim"), ("cross", name, 16, "query_dim"), ("flash", name, 16, "dim")]
    rows += [("flash", "head_dim", 16, "dim")]
    rows += [("cross", n, 12, "key_dim") for n in registry.OPTION_ALIASES["key_dim"]]
    rows += [("multi_head", n, 12, "kdim") for n in registry.OPTION_ALIASES["key_dim"]]
    rows += [("multi_head", n, 12, "vdim") for n in registry.OPTION_ALIASES["value_dim"]]
    rows += [("multi_head", n, 2, "heads") for n in registry.OPTION_ALIASES["heads"]]
    rows += [("flash", n, 0.25, "dropout") for n in registry.OPTION_ALIASES["dropout"]]
    rows += [("flash", n, True, "causal") for n in registry.OPTION_ALIASES["causal"]]
    rows += [("flash", n, 32, "block_size") for n in registry.OPTION_ALIASES["block_size"]]
    rows += [("flash", n, False, "simd") for n in registry.OPTION_ALIASES["simd"]]
    rows += [("hyperbolic", n, 0.5, "curvature") for n in registry.OPTION_ALIASES["curvature"]]
    rows += [("linear", n, "relu", "feature_map") for n in registry.OPTION_ALIASES["feature_map"]]
    rows += [("linear", n, 16, "nb_features") for n in registry.OPTION_ALIASES["nb_features"]]
    rows += [("local_global", n, 16, "window") for n in registry.OPTION_ALIASES["window"]]
    rows += [("moe", n, 1, "top_k") for n in registry.OPTION_ALIASES["top_k"]]
    return rows


OPTION_ALIASES_DIM = registry.OPTION_ALIASES["dim"]
CASES = _cases()
IDS = [f"{m}-{n}" for m, n, _, _ in CASES]


#: further options an option needs to be meaningful (nb_features is FAVOR+'s)
NEEDS: dict[str, dict[str, Any]] = {"nb_features": {"feature_map": "favor"}}


def _base(mech: str, target: str) -> dict[str, Any]:
    return {k: v for k, v in {**BASE[mech], **NEEDS.get(target, {})}.items() if k != target}


def _check(mech_obj: Any, mech: str, target: str, value: Any) -> None:
    assert mech_obj.name == mech
    got = mech_obj.options()[target]
    assert got == value and type(got) is type(value), (target, got, value)


def test_every_group_of_the_table_is_covered() -> None:
    covered = {(n, t) for _, n, _, t in CASES}
    for generic, spellings in registry.OPTION_ALIASES.items():
        assert set(spellings) <= {n for n, _ in covered}, generic
    assert len(CASES) == len(set(zip([c[0] for c in CASES], [c[1] for c in CASES], strict=True)))


@pytest.mark.parametrize(("mech", "name", "value", "target"), CASES, ids=IDS)
def test_registry_resolves_and_creates(mech: str, name: str, value: Any, target: str) -> None:
    assert registry.resolve_option(mech, name) == target
    assert registry.resolve_option(mech, name.replace("_", "-")) == target
    _check(registry.create(mech, **_base(mech, target), **{name: value}), mech, target, value)


@pytest.mark.parametrize(("mech", "name", "value", "target"), CASES, ids=IDS)
def test_sdk_builder(mech: str, name: str, value: Any, target: str) -> None:
    b = AttentionBuilder().type(mech).options(**_base(mech, target)).option(name, value)
    _check(b.build(), mech, target, value)


@pytest.mark.parametrize(("mech", "name", "value", "target"), CASES, ids=IDS)
def test_sdk_config_file(mech: str, name: str, value: Any, target: str) -> None:
    doc = {"type": mech, **_base(mech, target), name: value}
    text = "[attention]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in doc.items())
    _check(AttentionConfig.from_toml(text).build(), mech, target, value)


@pytest.mark.parametrize(("mech", "name", "value", "target"), CASES, ids=IDS)
def test_cli_config_file(tmp_path: Path, mech: str, name: str, value: Any, target: str) -> None:
    table = {**_base(mech, target), name: value}
    path = tmp_path / "attnkit.toml"
    path.write_text(f"[attention.{mech}]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in table.items()))
    config = load_config(path)
    _check(_common.create_mechanism(mech, {}, config), mech, target, value)


def _flags(options: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for k, v in options.items():
        flag = k.replace("_", "-")
        if isinstance(v, bool):
            out.append(f"--{flag}" if v else f"--no-{flag}")
        else:
            out += [f"--{flag}", str(v)]
    return out


def _cli_packs() -> list[list[tuple[str, str, Any, str]]]:
    """The rows as few ``compute`` runs as can carry them: the ``dim`` spellings take turns on
    multi_head, cross and flash, and one run holds rows of one mechanism with different targets."""
    turns = ("multi_head", "cross", "flash")
    rows = [c for c in CASES if c[1] not in OPTION_ALIASES_DIM or c[0] == turns[OPTION_ALIASES_DIM.index(c[1]) % 3]]
    packs: list[list[tuple[str, str, Any, str]]] = []
    for row in rows:
        for pack in packs:
            if pack[0][0] == row[0] and all(c[3] != row[3] and c[3] not in NEEDS.get(row[3], {}) and row[3] not in NEEDS.get(c[3], {}) for c in pack):
                pack.append(row)
                break
        else:
            packs.append([row])
    return packs


def test_cli_flags(tmp_path: Path) -> None:
    """``attnkit compute -t MECH --ALIAS VALUE ... --random 4 --json`` in a subprocess: every alias as a flag."""
    run = Runner(tmp_path)

    def one(pack: list[tuple[str, str, Any, str]]) -> Any:
        mech = pack[0][0]
        options = {k: v for k, v in BASE[mech].items() if k not in {c[3] for c in pack}}
        for row in pack:
            options.update(NEEDS.get(row[3], {}))
        options.update({name: value for _, name, value, _ in pack})
        return run("compute", "-t", mech, "--random", "4", "--json", *_flags(options), timeout=240)

    packs = _cli_packs()
    assert sum(map(len, packs)) >= len({c[1] for c in CASES})
    with ThreadPoolExecutor(max_workers=4) as pool:
        results = list(pool.map(one, packs))
    for pack, proc in zip(packs, results, strict=True):
        assert proc.returncode == 0, (pack, proc.stderr[-400:])
        summary = json.loads(proc.stdout)
        assert summary["type"] == pack[0][0]
        for _, name, value, target in pack:
            assert summary["options"][target] == value, (name, target, summary["options"])


@pytest.fixture(scope="module")
def client() -> Any:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from attnkit.server import Settings, create_app

    with TestClient(create_app(Settings(max_concurrency=1))) as c:
        yield c


@pytest.mark.parametrize(("mech", "name", "value", "target"), CASES, ids=IDS)
def test_server(client: Any, mech: str, name: str, value: Any, target: str) -> None:
    seed = {"seed": 0} if registry.find_option(mech, "seed") else {}  # same random weights on both sides
    mech_obj = registry.create(mech, **_base(mech, target), **seed, **{target: value})
    inputs = mech_obj.example_inputs(3, np.random.default_rng(0))
    body: dict[str, Any] = {"query": inputs[0].tolist(), "options": {**_base(mech, target), **seed, name: value}}
    if len(inputs) == 3:
        body.update(keys=inputs[1].tolist(), values=inputs[2].tolist())
    r = client.post(f"/v1/attention/{mech}", json=body)
    assert r.status_code == 200, r.text
    expected = mech_obj.forward(*inputs)
    got = np.asarray(r.json()["output"], dtype=np.float64)
    np.testing.assert_allclose(got, np.asarray(expected, np.float64), rtol=1e-5, atol=1e-6)


def test_server_numheads_like_the_cli(client: Any) -> None:
    """The issue's case: the server answered 422 to ``num_heads``; now it builds what ``--num-heads`` does."""
    inputs = registry.create("flash", heads=2, dim=4).example_inputs(3, np.random.default_rng(1))
    r = client.post("/v1/attention/flash", json={"query": inputs[0].tolist(), "options": {"num_heads": 2, "head_dim": 4}})
    assert r.status_code == 200, r.text


def test_listings_show_the_aliases(client: Any, tmp_path: Path) -> None:
    """``GET /v1/mechanisms`` and ``attnkit mechanisms NAME --json`` list, per option, the names that reach it."""
    listed = {m["name"]: {o["name"]: o["aliases"] for o in m["options"]} for m in client.get("/v1/mechanisms").json()["mechanisms"]}
    assert set(listed) == set(registry.names())
    for mech, options in listed.items():
        for option, aliases in options.items():
            assert all(registry.resolve_option(mech, a) == option for a in aliases), (mech, option, aliases)
    assert "dim" in listed["cross"]["query_dim"] and "dim" in listed["multi_head"]["model_dim"] and "head_dim" in listed["flash"]["dim"]
    proc = Runner(tmp_path)("mechanisms", "cross", "--json")
    assert proc.returncode == 0, proc.stderr
    assert {o["name"]: o["aliases"] for o in json.loads(proc.stdout)["options"]} == listed["cross"]


# ------------------------------------------------------------------------------------- conflicts
def test_conflict_registry_and_builder() -> None:
    for call in (
        lambda: registry.create("multi_head", model_dim=8, heads=2, num_heads=2),
        lambda: AttentionBuilder().type("multi_head").dim(8).heads(2).option("num_heads", 2).build(),
        lambda: AttentionBuilder().type("multi_head").dim(8).option("n_heads", 2).option("num_heads", 2).build(),
        lambda: AttentionBuilder().type("cross").dim(8).option("query_dim", 8).option("key_dim", 4).build(),
    ):
        with pytest.raises(ConfigError) as info:
            call()
        msg = str(info.value)
        assert "given twice" in msg, msg
        assert sum(n in msg for n in ("'heads'", "'num_heads'", "'n_heads'", "'dim'", "'query_dim'")) == 2, msg


def test_conflict_config_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"given twice, as 'heads' and as 'num_heads'"):
        AttentionConfig.from_toml('[attention]\ntype = "flash"\nheads = 2\nnum_heads = 2\n')
    with pytest.raises(ConfigError, match=r"given twice, as 'nhead' and as 'n_heads'"):
        AttentionConfig.from_toml('[attention]\ntype = "flash"\nnhead = 2\nn_heads = 2\n').build()
    path = tmp_path / "a.toml"
    path.write_text("[attention.flash]\nheads = 2\nnum_heads = 2\n")
    with pytest.raises(ConfigError, match=r"\[attention.flash\] heads: given twice, as 'heads' and as 'num_heads'"):
        load_config(path)
    path.write_text("[attention]\nnum_heads = 2\nheads = 2\n")
    with pytest.raises(ConfigError, match=r"num_heads: given twice, as 'num_heads' and as 'heads'"):
        load_config(path)


def test_conflict_cli(tmp_path: Path) -> None:
    run = Runner(tmp_path)
    line = one_error_line(run("compute", "-t", "flash", "--heads", "2", "--num-heads", "2", "--random", "4"))
    assert "given twice" in line and "'heads'" in line and "'num_heads'" in line, line
    line = one_error_line(run("compute", "-t", "flash", "-O", "c=1", "--random", "4"))
    assert "c" in line and "not an option of 'flash'" in line, line


def test_conflict_server(client: Any) -> None:
    r = client.post("/v1/attention/flash", json={"query": [[[0.0] * 4]], "options": {"heads": 1, "num_heads": 1, "dim": 4}})
    assert r.status_code == 422, r.text
    assert "given twice" in r.text and "'heads'" in r.text and "'num_heads'" in r.text


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-q"]))
