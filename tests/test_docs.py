"""The docs name only what exists (fast tier).

Read from README.md, CONTRIBUTING.md and docs/*.md as a user copies them: every command line of
a code block and every inline code span that is a command or an option.

- ``make <target>``: the target is a rule of the Makefile, every ``VAR=`` is one of its public
  variables (and one the target takes), and the Hydra overrides the target passes (its
  variables plus ``ARGS``) compose: config keys exist, group choices exist, every value of a
  sweep (``split.fold=0,1,2``) too. The same for ``lungbench <command>`` and ``python -m``.
- An option in prose (``weights.fallback=error``, ``layout=auto|zenodo|kaggle``: each
  alternative) composes in conf/train.yaml or conf/convert.yaml.
- Every repository path named, and every relative link (with its #anchor), exists.
- ``make help`` lists every experiment of conf/experiment/.
- CHANGELOG.md states the result.json schema the code writes.

Composition is Hydra's own (``hydra.compose``), so a key is checked exactly as the command line
would check it.
"""
from __future__ import annotations

import importlib.util
import re
import shlex
import subprocess
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONF = REPO / "conf"
DOC_FILES = [REPO / "README.md", REPO / "CONTRIBUTING.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
SPAN = re.compile(r"(?<!`)`([^`\n]+)`(?!`)")
LINK = re.compile(r"\]\(([^)\s]+)\)")
PLACEHOLDER = re.compile(r"<[^<>]*>")
# a Hydra override as written in prose: key (dotted, or a group path), '=', a value
OVERRIDE = re.compile(r"^[+~]?[a-z_][a-z0-9_]*(?:[./][a-z0-9_]+)*=\S*$")
MAKE_VAR = re.compile(r"^([A-Z][A-Z0-9_]*)=(.*)$", re.S)
# paths inside the repository, as the docs name them
PATH = re.compile(r"^(?:\.ci|benchmark|conf|converters|docs|perf|reports|tests)/[\w./-]*[\w/]$"
                  r"|^(?:README\.md|CONTRIBUTING\.md|CHANGELOG\.md|CITATION\.cff|LICENSE|Makefile|pyproject\.toml)$")
# make variables that select a config file: variable -> conf/ group
CHOICE_VARS = {"BACKBONE": "backbone", "SOLVER": "solver", "EXPERIMENT": "experiment", "DATA": "data"}
# targets whose ARGS are Hydra overrides, and of which config
HYDRA_TARGETS = {"data": "convert", "train": "train", "sweep": "train", "reproduce": "train"}


@dataclass(frozen=True)
class Mention:
    doc: str
    text: str
    in_code_block: bool

    def __str__(self) -> str:
        return f"{self.doc}: {self.text!r}"


def _rel(path: Path) -> str:
    return path.relative_to(REPO).as_posix()


def _strip_fences(text: str) -> str:
    return FENCE.sub("", text)


@cache
def mentions() -> tuple[Mention, ...]:
    """Command lines of code blocks (continuations joined) and inline code spans."""
    out = []
    for doc in DOC_FILES:
        text = doc.read_text()
        for block in FENCE.findall(text):
            for line in block.replace("\\\n", " ").splitlines():
                if line.strip():
                    out.append(Mention(_rel(doc), line.strip(), True))
        for span in SPAN.findall(_strip_fences(text)):
            # a | inside a table cell is written \|
            out.append(Mention(_rel(doc), span.replace("\\|", "|").strip(), False))
    return tuple(out)


def _words(line: str) -> list[str] | None:
    """The line as a shell would split it (comments dropped); None if it is not shell words."""
    try:
        return shlex.split(line, comments=True)
    except ValueError:
        return None


def _command(m: Mention) -> list[str] | None:
    """The words of a command lungbench's docs give (make, lungbench, python -m), else None."""
    words = _words(m.text)
    if not words:
        return None
    if words[0] in ("make", "lungbench") or (Path(words[0]).name.startswith("python")
                                            and words[1:2] == ["-m"]):
        return words
    return None


# ----------------------------------------------------------------------------- the Makefile
@cache
def make_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9][A-Za-z0-9_.-]*)\s*:(?!=)", text, re.M))


@cache
def public_vars() -> set[str]:
    m = re.search(r"^PUBLIC_VARS\s*:?=\s*(.+)$", (REPO / "Makefile").read_text(), re.M)
    assert m, "Makefile: no PUBLIC_VARS line (the public variables the docs may name)"
    return set(m.group(1).split())


def target_vars() -> dict[str, set[str]] | None:
    """The variables each target takes (converters.launch.USES), where that table exists."""
    try:
        from converters.launch import USES
    except ImportError:
        return None
    return USES


# ----------------------------------------------------------------------------- Hydra
@cache
def _launchers_registered() -> bool:
    from benchmark.sweeping.hydra_callbacks import register_launchers

    register_launchers()
    return True


def compose_error(config: str, overrides: list[str]) -> str | None:
    """None when ``overrides`` compose with conf/<config>.yaml, else Hydra's message."""
    return _compose_error(config, tuple(overrides))


@cache
def _compose_error(config: str, overrides: tuple[str, ...]) -> str | None:
    try:
        _compose(config, overrides)
    except Exception as e:  # noqa: BLE001 - any composition error is the finding
        return f"{type(e).__name__}: {str(e).splitlines()[0]}"
    return None


@cache
def _compose(config: str, overrides: tuple[str, ...]):
    from hydra import compose, initialize_config_dir

    _launchers_registered()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config, overrides=list(overrides), return_hydra_config=True)


def _placeholder(value: str) -> bool:
    """A value the reader fills in: <dir>, N, K, FILE, ..."""
    return bool(PLACEHOLDER.search(value)) or "..." in value or bool(re.fullmatch(r"[A-Z]+", value))


def _group(key: str) -> str | None:
    """The conf/ group an override key chooses (``+experiment`` -> experiment), else None."""
    k = key.lstrip("+~")
    return k if (CONF / k).is_dir() or k.startswith("hydra/") else None


def _key_exists(config: str, base: list[str], key: str) -> str | None:
    """None when ``key`` (whose value is a placeholder) is a key of the config or a group."""
    from omegaconf import OmegaConf

    if key.startswith("+"):
        return None
    group = _group(key)
    if group is not None:
        return None if (CONF / group).is_dir() else f"no config group conf/{group}/"
    cfg = _compose(config, tuple(base))
    parent, _, leaf = key.rpartition(".")
    node = OmegaConf.select(cfg, parent) if parent else cfg
    return None if node is not None and leaf in node else f"no key {key!r} in conf/{config}.yaml"


def override_errors(config: str, overrides: list[str]) -> list[str]:
    """What is wrong with ``overrides`` for conf/<config>.yaml: every value of every sweep is
    composed in turn; a placeholder value checks its key only."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    concrete, placeholders = [], []
    for o in overrides:
        if "=" not in o and _placeholder(o):
            continue  # ARGS='...'
        key, _, value = o.partition("=")
        (placeholders if not value or _placeholder(value) else concrete).append(o)
    try:
        parsed = OverridesParser.create().parse_overrides(concrete)
    except Exception as e:  # noqa: BLE001
        return [f"{concrete}: not Hydra overrides ({type(e).__name__}: {str(e).splitlines()[0]})"]
    base, sweeps = [], []
    for o in parsed:
        key = o.get_key_element()
        if o.is_sweep_override():
            values = list(o.sweep_string_iterator())
            base.append(f"{key}={values[0]}")
            sweeps.append((len(base) - 1, key, values[1:]))
        else:
            base.append(f"{key}={o.get_value_element_as_str()}")
    errors = []
    if err := compose_error(config, base):
        return [f"{base}: {err}"]
    for i, key, values in sweeps:
        if _group(key) is None:
            continue  # Hydra checks a plain key, not its value: the first value checked it
        for v in values:
            trial = [*base[:i], f"{key}={v}", *base[i + 1:]]
            if err := compose_error(config, trial):
                errors.append(f"{key}={v}: {err}")
    for o in placeholders:
        if err := _key_exists(config, base, o.partition("=")[0]):
            errors.append(err)
    return errors


def _fill(value: str) -> str:
    return PLACEHOLDER.sub("x", value)


def make_overrides(target: str, given: dict[str, str]) -> tuple[str, list[str]] | None:
    """The config and the Hydra overrides ``make <target> VAR=...`` hands its program."""
    config = HYDRA_TARGETS.get(target)
    if config is None:
        return None
    args = shlex.split(given.get("ARGS", ""))
    # a choice the reader fills in (EXPERIMENT=<name>) keeps the default: its folder is checked
    v = {k: _fill(val) for k, val in given.items() if not (k in CHOICE_VARS and _placeholder(val))}
    if target == "data":
        data = v.get("DATA") or ("covid19_ct_seg" if v.get("DATA_ROOT") else "phantom")
        ov = [f"data={data}", *([f"data.root={v['DATA_ROOT']}"] if v.get("DATA_ROOT") else [])]
        return config, ov + [f"out={v.get('DATA_OUT', 'x')}", *args]
    ov = [f"dataset_dir={v.get('DATA_OUT', 'x')}"]
    if target == "train":
        ov += [f"backbone={v.get('BACKBONE', 'r50_fpn')}", f"solver={v.get('SOLVER', 'smoke')}"]
    elif target == "sweep":
        ov += [f"+experiment={v.get('EXPERIMENT', 'grid9')}", *([f"solver={v['SOLVER']}"] if "SOLVER" in v else [])]
    else:  # reproduce: the table3 sweep over the official folds
        ov += ["+experiment=table3", "split=ma2021_5fold", "split.fold=0,1,2,3,4"]
    return config, ov + args


# ----------------------------------------------------------------------------- the checks
def make_lines() -> list[tuple[Mention, list[str], dict[str, str]]]:
    """(mention, targets, VAR=value) of every ``make`` command the docs give."""
    out = []
    for m in mentions():
        words = _command(m)
        if not words or words[0] != "make":
            continue
        targets, given = [], {}
        for w in words[1:]:
            if w.startswith("-"):
                continue
            if mv := MAKE_VAR.match(w):
                given[mv.group(1)] = mv.group(2)
            elif not PLACEHOLDER.search(w) and "..." not in w and not w.startswith("["):
                targets.append(w)
        out.append((m, targets, given))
    return out


def test_docs_give_make_commands():
    """The parser finds what it checks (a parser that finds nothing would pass anything)."""
    lines = make_lines()
    targets = {t for _, ts, _ in lines for t in ts}
    assert {"demo", "reproduce", "data", "sweep", "train", "predict", "report"} <= targets, targets
    assert any("ARGS" in g for _, _, g in lines)


def test_every_make_target_exists():
    bad = [f"{m}: no target {t!r} in the Makefile" for m, ts, _ in make_lines() for t in ts
           if t not in make_targets()]
    assert not bad, "\n".join(bad)


def test_every_make_variable_exists_and_is_taken_by_its_target():
    uses = target_vars()
    bad = []
    for m, targets, given in make_lines():
        for var in given:
            if var not in public_vars():
                bad.append(f"{m}: {var} is not a public variable of the Makefile")
            for t in targets:
                if uses is not None and t in uses and var not in uses[t]:
                    bad.append(f"{m}: make {t} does not take {var}")
    assert not bad, "\n".join(bad)


def test_every_make_command_composes():
    """What each documented make command would hand to Hydra composes: keys, groups, sweeps."""
    bad = []
    for m, targets, given in make_lines():
        for t in targets:
            spec = make_overrides(t, given)
            if spec is not None:
                bad += [f"{m}: {e}" for e in override_errors(*spec)]
    assert not bad, "\n".join(bad)


def test_every_lungbench_and_python_command_exists_and_composes():
    from benchmark.cli import COMMANDS

    bad, seen = [], 0
    for m in mentions():
        words = _command(m)
        if not words or words[0] == "make":
            continue
        if words[0] == "lungbench":
            name = words[1] if len(words) > 1 else ""
            if name.startswith("-") or name in ("help", ""):
                continue
            if name not in COMMANDS and not PLACEHOLDER.search(name):
                bad.append(f"{m}: no lungbench command {name!r}")
                continue
            module, rest = COMMANDS.get(name, ("", ""))[0], words[2:]
        else:
            module, rest = words[2], words[3:]
            if importlib.util.find_spec(module) is None:
                bad.append(f"{m}: no module {module!r}")
                continue
        seen += 1
        config = {"converters.convert": "convert", "benchmark.train": "train",
                  "benchmark.sweep": "train"}.get(module)
        overrides = [_fill(w) for w in rest if "=" in w and not w.startswith("-")]
        if config and overrides:
            bad += [f"{m}: {e}" for e in override_errors(config, overrides)]
    assert seen, "no lungbench or python -m command found in the docs"
    assert not bad, "\n".join(bad)


def _prose_overrides() -> list[tuple[Mention, list[str]]]:
    """Inline spans that are options: ``key=value`` (alternatives a|b|c each), ``ARGS='...'``."""
    out = []
    for m in mentions():
        if m.in_code_block or _command(m):
            continue
        if m.text.startswith("ARGS="):
            words = _words(m.text)
            out.append((m, shlex.split(words[0][len("ARGS="):]) if words else [m.text]))
            continue
        text = m.text.strip("'\"")
        if OVERRIDE.match(text):
            key, _, value = text.partition("=")
            alts = value.split("|") if "|" in value and not value.startswith("[") else [value]
            out += [(m, [f"{key}={a}"]) for a in alts]
    return out


def _prose_error(overrides: list[str]) -> str | None:
    """None when the overrides compose with train.yaml (under some launcher, for launcher
    keys) or convert.yaml; else the train.yaml error."""
    trials = [[]]
    if any(o.lstrip("+~").startswith("hydra.launcher.") for o in overrides) \
            and not any(o.startswith("hydra/launcher=") for o in overrides):
        names = sorted(p.stem.removeprefix("lungbench_") for p in (CONF / "hydra" / "launcher").glob("*.yaml"))
        trials = [[f"hydra/launcher={n}"] for n in names]
    first = None
    for extra in trials:
        errs = override_errors("train", ["dataset_dir=x", *extra, *overrides])
        if not errs:
            return None
        first = first or errs[0]
    if not override_errors("convert", overrides):
        return None
    return first


def _root(override: str) -> str:
    return re.split(r"[./=]", override.lstrip("+~"), maxsplit=1)[0]


def _batches(options: set[str], config: str) -> list[list[str]]:
    """The single concrete options whose top-level key is one of conf/<config>.yaml's, packed
    into groups without a repeated key, each composed once (about 0.1 s a composition): a
    group that composes clears all of its options."""
    roots = set(_compose(config, ("dataset_dir=x",) if config == "train" else ()))
    batches: list[list[str]] = []
    for o in sorted(options):
        if _placeholder(o.partition("=")[2]) or _root(o) == "hydra" or _root(o) not in roots:
            continue
        key = o.partition("=")[0].lstrip("+~")
        for batch in batches:
            if all(x.partition("=")[0].lstrip("+~") != key for x in batch):
                batch.append(o)
                break
        else:
            batches.append([o])
    return batches


def test_every_option_named_in_prose_exists():
    found = _prose_overrides()
    assert len(found) > 20, f"the parser found only {len(found)} options in the docs"
    singles = {ov[0] for _, ov in found if len(ov) == 1}
    cleared: set[str] = set()
    for config, base in (("train", ["dataset_dir=x"]), ("convert", [])):
        for batch in _batches(singles, config):
            if not override_errors(config, base + batch):
                cleared.update(batch)
    bad = [f"{m}: {err}" for m, ov in found
           if not (len(ov) == 1 and ov[0] in cleared) and (err := _prose_error(ov))]
    assert not bad, "\n".join(bad)


def test_make_variables_named_in_prose_exist():
    """``DATA=phantom``, ``EXPERIMENT=leak``: a public variable, and a config that exists;
    ``LUNGBENCH_*=`` environment variables: read somewhere in the repository."""
    code = "\n".join(p.read_text(errors="replace") for pattern in ("*.py", "*.sh", "run")
                     for folder in ("contracts", "benchmark", "converters", "reports", "perf", "tests", ".ci")
                     for p in (REPO / folder).rglob(pattern) if ".venv" not in p.parts)
    bad = []
    for m in mentions():
        mv = MAKE_VAR.match(m.text) if not m.in_code_block else None
        if not mv:
            continue
        var, value = mv.group(1), mv.group(2).strip("'\"")
        if var.startswith("LUNGBENCH_"):
            if var not in code:
                bad.append(f"{m}: no code reads {var}")
        elif var not in public_vars():
            bad.append(f"{m}: {var} is not a public variable of the Makefile")
        elif var in CHOICE_VARS and value and not _placeholder(value) \
                and not (CONF / CHOICE_VARS[var] / f"{value}.yaml").is_file():
            bad.append(f"{m}: no conf/{CHOICE_VARS[var]}/{value}.yaml")
    assert not bad, "\n".join(bad)


def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(doc: Path) -> set[str]:
    return {_slug(h) for h in re.findall(r"^#+\s+(.+)$", _strip_fences(doc.read_text()), re.M)}


def test_every_path_and_link_exists():
    bad, n = [], 0
    for doc in DOC_FILES:
        text = doc.read_text()
        for span in SPAN.findall(_strip_fences(text)) + re.findall(r"\S+", "\n".join(FENCE.findall(text))):
            p = span.strip("'\"(),;:")
            if PATH.match(p) and not PLACEHOLDER.search(p):
                n += 1
                if not (REPO / p).exists():
                    bad.append(f"{_rel(doc)}: {p} does not exist")
        for target in LINK.findall(_strip_fences(text)):
            if re.match(r"^[a-z]+:", target):
                continue  # a URL
            n += 1
            path, _, anchor = target.partition("#")
            dest = (doc.parent / path).resolve() if path else doc
            if not dest.exists():
                bad.append(f"{_rel(doc)}: link {target} points to nothing")
            elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
                bad.append(f"{_rel(doc)}: link {target}: no heading #{anchor} in {dest.name}")
    assert n > 30, f"the parser found only {n} paths and links"
    assert not bad, "\n".join(bad)


def test_make_help_lists_every_experiment():
    out = subprocess.run(["make", "--no-print-directory", "-s", "help"], cwd=REPO,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    experiments = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
    assert experiments, "no experiments in conf/experiment/"
    # listed together: on one line, or one per line as the first word (a target's description
    # that happens to hold the word, as "smoke" in the demo's, does not count)
    lines = [set(re.findall(r"[\w-]+", line)) for line in out.stdout.splitlines()]
    firsts = {w[0] for w in (re.findall(r"[\w-]+", line) for line in out.stdout.splitlines()) if w}
    best = max(lines, key=lambda words: len(words & set(experiments)), default=set())
    missing = [e for e in experiments if e not in best and e not in firsts - make_targets()]
    assert not missing, f"make help does not list the experiment(s) {missing}:\n{out.stdout}"


def test_changelog_states_the_result_schema():
    from contracts.result import SCHEMA

    rows = re.findall(r"^\|\s*`result\.json`\s*\|\s*(\d+)\s*\|", (REPO / "CHANGELOG.md").read_text(), re.M)
    assert rows == [str(SCHEMA)], (f"CHANGELOG.md gives result.json schema {rows}, the code writes "
                                   f"{SCHEMA}: add what the new schema adds")


def test_readme_stays_short():
    """What a newcomer reads first: the commands, how to read the report and the architecture
    (about ten minutes); the rest belongs in docs/."""
    n = len((REPO / "README.md").read_text().splitlines())
    assert n <= 210, f"README.md has {n} lines; move details into docs/"


@pytest.mark.parametrize("doc", ["README.md", "docs/index.md"])
def test_index_reaches_every_page(doc):
    """Every docs page is linked from the docs index (and the index from the README)."""
    text = (REPO / doc).read_text()
    if doc == "README.md":
        assert "docs/index.md" in text
        return
    pages = sorted(p.name for p in (REPO / "docs").glob("*.md") if p.name != "index.md")
    missing = [p for p in pages if f"]({p})" not in text]
    assert not missing, f"docs/index.md does not link {missing}"


def test_pinned_versions_in_install_lines_are_the_ones_pyproject_asks_for():
    """`pip install torch==X` in the docs installs a torch that `make setup` keeps."""
    import tomllib

    from packaging.requirements import Requirement

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {(r := Requirement(d)).name.lower(): r.specifier for d in deps}
    pins, bad = 0, []
    for m in mentions():
        words = _words(m.text) or []
        if "pip" not in " ".join(words[:3]) or "install" not in words:
            continue
        for w in words:
            name, eq, version = w.partition("==")
            if eq and name.lower() in wanted:
                pins += 1
                if not wanted[name.lower()].contains(version, prereleases=True):
                    bad.append(f"{m}: {w} is not what pyproject.toml asks for ({name}{wanted[name.lower()]})")
    assert pins >= 2, "no pinned torch / torchvision install line found in the docs"
    assert not bad, "\n".join(bad)


def test_citation_file_cites_the_packaged_dataset():
    """CITATION.cff loads, has CFF's required keys, and its dataset DOI and record are the
    ones of the packaged dataset facts (converters/covid19_ct_seg.json)."""
    import json

    import yaml

    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert {"cff-version", "message", "title", "authors"} <= set(cff), sorted(cff)
    facts = json.loads((REPO / "converters" / "covid19_ct_seg.json").read_text())
    data = [r for r in cff.get("references", []) if r.get("type") == "data"]
    assert len(data) == 1, "CITATION.cff: one dataset reference (type: data)"
    assert f"doi:{data[0]['doi']}" in facts["citation"], (data[0]["doi"], facts["citation"])
    assert data[0]["url"] == facts["record_url"]
    import tomllib

    assert cff["license"] == tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["license"]
