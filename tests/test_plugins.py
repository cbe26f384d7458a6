"""The plugin system: every hook, discovery through a really installed entry point,
conflicts, broken plugins, the off switch, and the fast start-up it must keep."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import warnings
from importlib.metadata import PackageNotFoundError, distribution
from types import SimpleNamespace

import numpy as np
import pytest

from her2kit import hookspecs, plugins
from her2kit.errors import InputError, PluginError
from her2kit.hookspecs import (
    ModelSpec,
    PreprocessorSpec,
    ReaderSpec,
    ScorerSpec,
    hookimpl,
)
from her2kit.plugins import PluginWarning, Registry

OPENSLIDE_DIST = "her2kit-openslide"


def _installed(dist: str) -> bool:
    try:
        distribution(dist)
    except PackageNotFoundError:
        return False
    return True


needs_openslide_plugin = pytest.mark.skipif(
    not _installed(OPENSLIDE_DIST),
    reason=f"{OPENSLIDE_DIST} is not installed (pip install -e plugins/her2kit-openslide)",
)


def _factory(*args, **kwargs):
    return ("made", args, kwargs)


class OnePlugin:
    """A test plugin with one record of each kind."""

    @hookimpl
    def her2kit_readers(self):
        return [ReaderSpec("test-reader", "reads .tst", _factory, suffixes=(".tst",), priority=5)]

    @hookimpl
    def her2kit_preprocessors(self):
        return [PreprocessorSpec("test-pre", "does nothing", _factory, stage="normalise")]

    @hookimpl
    def her2kit_models(self):
        return [ModelSpec("test-model", "a model", _factory, options={"width": 4})]

    @hookimpl
    def her2kit_scorers(self):
        return [ScorerSpec("test-scorer", "a scorer", _factory)]


def _registry_with(*plugins_and_origins) -> Registry:
    reg = Registry(load_entry_points=False)
    for i, (plugin, origin) in enumerate(plugins_and_origins):
        reg.register(plugin, name=f"{origin}:{i}", origin=origin)
    return reg


def _check_hook(kind: str, name: str, record_type: type):
    reg = _registry_with((OnePlugin(), "her2kit-test"))
    entry = {e.name: e for e in reg.list(kind)}[name]
    assert entry.kind == kind and entry.origin == "her2kit-test"
    assert isinstance(entry.record, record_type)
    assert reg.get(kind, name) is entry.record
    assert entry.record.factory(1, a=2) == ("made", (1,), {"a": 2})
    # the built-ins come through the same hook, beside it
    builtin = [e for e in reg.list(kind) if e.origin == "builtin"]
    assert builtin, f"no built-in {kind}"
    for other_kind in hookspecs.KINDS:
        if other_kind != kind:
            assert name not in {e.name for e in reg.list(other_kind)}
    return entry


# ---------------------------------------------------------------- one test per hook


def test_hook_her2kit_readers(tmp_path):
    entry = _check_hook("reader", "test-reader", ReaderSpec)
    assert entry.record.priority == 5
    # open_slide picks a plugin reader by suffix
    from her2kit.readers import open_slide

    (tmp_path / "x.tst").write_text("x")
    reg = _registry_with((OnePlugin(), "her2kit-test"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(plugins, "_registry", reg)
        assert open_slide(tmp_path / "x.tst")[0] == "made"


@pytest.mark.parametrize("raised,expected", [(ValueError("bad header"), "InputError"),
                                              (ModuleNotFoundError("No module named 'vendorlib'"), "PluginError")])
def test_reader_that_lets_an_exception_escape(tmp_path, monkeypatch, raised, expected):
    """open_slide turns a plugin reader's stray exception into a one-line her2kit error."""
    from her2kit.readers import open_slide

    def factory(path):
        raise raised

    class Leaky:
        @hookimpl
        def her2kit_readers(self):
            return [ReaderSpec("leaky", "raises", factory, suffixes=(".lky",))]

    path = tmp_path / "x.lky"
    path.write_text("x")
    monkeypatch.setattr(plugins, "_registry", _registry_with((Leaky(), "her2kit-leaky")))
    with pytest.raises((InputError, PluginError)) as info:
        open_slide(path)
    assert type(info.value).__name__ == expected
    assert "leaky" in str(info.value) and str(raised) in str(info.value) and "\n" not in str(info.value)
    if expected == "InputError":
        assert str(path) in str(info.value)


@pytest.mark.parametrize("kind,said", [
    ("short", "returned a uint8 array of shape (32, 64, 3) for a 64x64 region"),
    ("uint16", "returned a uint16 array of shape (64, 64, 3)"),
    ("raises", "cannot read pixels: RuntimeError: disk on fire"),
])
def test_a_reader_returning_the_wrong_pixels_fails_that_input_only(tmp_path, monkeypatch, capsys, kind, said):
    """QA: half the rows were scored silently; a uint16 region failed late, as an internal error."""
    import argparse

    from her2kit.readers.pixels import ArraySlide
    from her2kit.scoring.commands import run

    class OddSlide(ArraySlide):
        def __init__(self, path):
            self.path, self._mpp, self._axes = str(path), 0.5, "YXC"
            self._levels = [np.full((64, 64, 3), 245, np.uint8)]
            self._validate()

        def read_region(self, y, x, h, w, level=0):
            if kind == "raises":
                raise RuntimeError("disk on fire")
            rgb = super().read_region(y, x, h, w, level)
            return rgb[: h // 2] if kind == "short" else rgb.astype(np.uint16)

    class Odd:
        @hookimpl
        def her2kit_readers(self):
            return [ReaderSpec("odd", "wrong pixels", OddSlide, suffixes=(".odd",))]

    monkeypatch.setattr(plugins, "_registry", _registry_with((Odd(), "her2kit-odd")))
    (tmp_path / "a.odd").write_text("x")
    good = tmp_path / "b.png"
    from PIL import Image

    Image.fromarray(np.full((64, 64, 3), 245, np.uint8)).save(good)
    args = argparse.Namespace(inputs=[str(tmp_path / "a.odd"), str(good)], out=str(tmp_path / "out"), model=None,
                              mpp=0.5, force=False, roi=None, scorer="asco-cap-2018", device=None,
                              workers=1, scheduler=None)
    assert run(args, get_segmenter=lambda: None) == 1
    err = capsys.readouterr().err
    assert f"her2kit: error: {tmp_path / 'a.odd'}: " in err and said in err and "1 of 2 inputs failed" in err
    assert (tmp_path / "out" / "b" / "score.json").is_file() and not (tmp_path / "out" / "a").exists()


def test_a_reader_whose_library_is_missing_gives_way_to_the_next(tmp_path, monkeypatch):
    """QA: a higher-priority reader that could not load (OpenSlide without its
    library) failed every file another reader could open."""
    from her2kit.readers import open_slide

    def missing(path):
        raise ModuleNotFoundError("No module named 'vendorlib'")

    class Two:
        @hookimpl
        def her2kit_readers(self):
            return [ReaderSpec("vendor", "needs vendorlib", missing, suffixes=(".lky",), priority=10),
                    ReaderSpec("plain", "works", lambda path: ("opened", path), suffixes=(".lky",))]

    path = tmp_path / "x.lky"
    path.write_text("x")
    monkeypatch.setattr(plugins, "_registry", _registry_with((Two(), "her2kit-two")))
    with pytest.warns(PluginWarning, match=r"reader 'vendor' cannot load.*vendorlib.*read with the 'plain' reader"):
        assert open_slide(path) == ("opened", str(path))


def test_hook_her2kit_preprocessors():
    assert _check_hook("preprocessor", "test-pre", PreprocessorSpec).record.stage == "normalise"


def test_hook_her2kit_models():
    assert _check_hook("model", "test-model", ModelSpec).record.options == {"width": 4}


def test_hook_her2kit_scorers():
    _check_hook("scorer", "test-scorer", ScorerSpec)


def test_every_hook_has_a_test():
    """Adding a hook to her2kit.hookspecs without a test_hook_<name> here fails."""
    hooks = [name for name, obj in inspect.getmembers(hookspecs, inspect.isfunction)
             if hasattr(obj, "her2kit_spec")]
    assert len(hooks) >= 4
    tests = {name for name in globals() if name.startswith("test_hook_")}
    missing = [h for h in hooks if f"test_hook_{h}" not in tests]
    assert not missing, f"hooks without a test: {missing}"
    assert set(hookspecs.HOOK_OF_KIND.values()) == set(hooks)


def test_wrong_record_type_is_an_error():
    class Wrong:
        @hookimpl
        def her2kit_models(self):
            return [ScorerSpec("x", "a scorer in the wrong hook", _factory)]

    with pytest.raises(PluginError, match="expected ModelSpec"):
        _registry_with((Wrong(), "wrong-dist")).list()


@pytest.mark.parametrize("returned,said", [
    (ScorerSpec("one", "not in a list", _factory), "expected a list of ScorerSpec"),
    ([ScorerSpec(None, "no name", _factory)], "whose name is None"),
    ([ReaderSpec("qaf", "a string of endings", _factory, suffixes=".qaf")], "whose suffixes are '.qaf'"),
])
def test_malformed_records_are_an_error_naming_the_plugin(returned, said):
    # QA: these were tracebacks ("'ScorerSpec' object is not iterable"), and
    # suffixes=".qaf" made the reader claim every file ending in "f"
    hook = "her2kit_readers" if isinstance(returned, list) and isinstance(returned[0], ReaderSpec) else "her2kit_scorers"

    class Odd:
        pass

    setattr(Odd, hook, hookimpl(lambda self: returned))
    with pytest.raises(PluginError, match=f"plugin odd-dist:0 returned .*{said}"):
        _registry_with((Odd(), "odd-dist")).list()


def test_a_scorer_that_fails_or_returns_what_json_cannot_hold_is_a_plugin_error(monkeypatch):
    # QA: a scorer returning a set replaced a good score.json by a traceback
    from her2kit.scoring.commands import scorer_value

    def boom(table):
        raise ValueError("no cells\nat all")

    class Odd:
        @hookimpl
        def her2kit_scorers(self):
            return [ScorerSpec("qa-set", "a set", lambda: (lambda table: {1, 2})),
                    ScorerSpec("qa-raise", "raises", lambda: boom),
                    ScorerSpec("qa-fine", "numpy values", lambda: (lambda table: {"m": np.float32(1.5)}))]

    monkeypatch.setattr(plugins, "_registry", _registry_with((Odd(), "odd")))
    table = {"category": np.zeros(0, np.int64), "tumour": np.zeros(0, bool)}
    with pytest.raises(PluginError, match="scorer 'qa-set' returned a set, which score.json cannot hold"):
        scorer_value("qa-set", table)
    with pytest.raises(PluginError, match="scorer 'qa-raise' failed: ValueError: no cells at all$"):
        scorer_value("qa-raise", table)
    assert scorer_value("qa-fine", table)["m"] == 1.5


def test_model_names_with_a_dot_and_unknown_names(tmp_path, monkeypatch, capsys):
    # QA: "qa.net" was taken for a checkpoint path; an unknown --model left an empty --out
    from her2kit.cli import main
    from her2kit.inference import is_model_name

    class Dotted:
        @hookimpl
        def her2kit_models(self):
            return [ModelSpec("qa.net", "a name with a dot", _factory)]

    monkeypatch.setattr(plugins, "_registry", _registry_with((Dotted(), "qa")))
    monkeypatch.chdir(tmp_path)
    assert is_model_name("qa.net") and not is_model_name("runs/best.json")
    (tmp_path / "qa.net").write_text("a file of that name wins")
    assert not is_model_name("qa.net")
    assert main(["score", "x.png", "--out", "out", "--model", "no-such-net"]) != 0
    assert "unknown model 'no-such-net'" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_a_hook_may_yield_its_records():
    class Yields:
        @hookimpl
        def her2kit_scorers(self):
            yield ScorerSpec("yielded", "from a generator", _factory)

    assert "yielded" in {e.name for e in _registry_with((Yields(), "y")).list("scorer")}


def test_upper_case_reader_suffixes_match(tmp_path):
    from her2kit.readers import _suffix_match

    assert _suffix_match(str(tmp_path / "a.qaf"), [".QAF"]) == 4


def test_a_misspelled_hook_is_a_warning_and_workers_keep_quiet(fake_entry_points, monkeypatch):
    class Typo:
        @hookimpl
        def her2kit_scorer(self):  # not her2kit_scorers
            return []

    fake_entry_points[0] = FakeEntryPoint("typo", "her2kit-typo", Typo)
    with pytest.warns(PluginWarning, match=r"unknown hook 'her2kit_scorer'"):
        assert "good-scorer" in {e.name for e in Registry().list()}
    monkeypatch.setenv(plugins.SHOWN_ENV, "1")  # a worker process: the main one has said it
    fake_entry_points[0] = FakeEntryPoint("broken", "her2kit-broken", _broken_load)
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)
        reg = Registry()
        assert "good-scorer" in {e.name for e in reg.list()}
    assert [dist for dist, _ in reg.failed] == ["her2kit-broken"]


def test_one_module_under_two_entry_points_is_one_short_warning(fake_entry_points):
    module = _good_plugin()
    fake_entry_points[:] = [FakeEntryPoint("first", "her2kit-good", lambda: module),
                            FakeEntryPoint("second", "her2kit-good", lambda: module)]
    with pytest.warns(PluginWarning, match=r"'second' .* already registered under another entry point") as seen:
        assert "good-scorer" in {e.name for e in Registry().list()}
    assert len(seen) == 1 and len(str(seen[0].message)) < 200


def test_plugin_calling_sys_exit_at_import_is_a_warning(fake_entry_points):
    def exits():
        raise SystemExit(5)

    fake_entry_points[0] = FakeEntryPoint("quitter", "her2kit-quitter", exits)
    with pytest.warns(PluginWarning, match=r"'quitter'.*SystemExit"):
        assert "good-scorer" in {e.name for e in Registry().list()}


# ---------------------------------------------------------------- conflicts and failures


def test_two_plugins_claiming_one_name_is_an_error_naming_both():
    class A:
        @hookimpl
        def her2kit_scorers(self):
            return [ScorerSpec("dup", "first", _factory)]

    class B:
        @hookimpl
        def her2kit_scorers(self):
            return [ScorerSpec("dup", "second", _factory)]

    reg = _registry_with((A(), "dist-alpha"), (B(), "dist-beta"))
    with pytest.raises(PluginError) as info:
        reg.list()
    message = str(info.value)
    assert "'dup'" in message and "dist-alpha" in message and "dist-beta" in message


def test_plugin_claiming_a_builtin_name_is_an_error():
    class Clash:
        @hookimpl
        def her2kit_readers(self):
            return [ReaderSpec("tifffile", "my own tifffile", _factory, suffixes=(".tif",))]

    with pytest.raises(PluginError, match=r"tifffile.*builtin.*clash-dist|tifffile.*clash-dist.*builtin"):
        _registry_with((Clash(), "clash-dist")).list()


class FakeEntryPoint:
    """Enough of importlib.metadata.EntryPoint for the registry."""

    def __init__(self, name, dist, load):
        self.name, self.value = name, f"{dist.replace('-', '_')}.plugin"
        self.dist = SimpleNamespace(name=dist)
        self._load = load

    def load(self):
        return self._load()


def _broken_load():
    raise ImportError("No module named 'missing_dependency'")


def _good_plugin():
    class Good:
        @hookimpl
        def her2kit_scorers(self):
            return [ScorerSpec("good-scorer", "from an entry point", _factory)]

    return Good()


@pytest.fixture
def fake_entry_points(monkeypatch):
    eps = [FakeEntryPoint("broken", "her2kit-broken", _broken_load),
           FakeEntryPoint("good", "her2kit-good", _good_plugin)]

    def entry_points(group):
        assert group == plugins.ENTRY_POINT_GROUP
        return eps

    monkeypatch.setattr(plugins, "entry_points", entry_points)
    monkeypatch.delenv(plugins.DISABLE_ENV, raising=False)
    return eps


def test_broken_plugin_warns_and_the_rest_works(fake_entry_points):
    reg = Registry()
    with pytest.warns(PluginWarning, match=r"'broken'.*her2kit-broken.*missing_dependency"):
        entries = reg.list()
    origins = {e.name: e.origin for e in entries}
    assert origins["good-scorer"] == "her2kit-good"
    assert origins["tifffile"] == "builtin" and origins["asco-cap-2018"] == "builtin"
    assert [dist for dist, _ in reg.failed] == ["her2kit-broken"]


def test_plugin_whose_hook_raises_warns_and_the_rest_works():
    class Raises:
        @hookimpl
        def her2kit_models(self):
            raise RuntimeError("cannot build my records")

    reg = _registry_with((Raises(), "her2kit-raises"), (OnePlugin(), "her2kit-test"))
    with pytest.warns(PluginWarning, match="cannot build my records"):
        names = {e.name for e in reg.list()}
    assert {"test-model", "test-scorer", "her2net"} <= names


def test_disable_env_hides_third_party_plugins(fake_entry_points, monkeypatch):
    monkeypatch.setenv(plugins.DISABLE_ENV, "1")
    with warnings.catch_warnings():
        warnings.simplefilter("error", PluginWarning)  # the broken one is not even loaded
        entries = Registry().list()
    assert entries and {e.origin for e in entries} == {"builtin"}
    for value in ("0", "false", "No"):  # QA: "false" disabled them
        monkeypatch.setenv(plugins.DISABLE_ENV, value)
        with pytest.warns(PluginWarning):
            assert "good-scorer" in {e.name for e in Registry().list()}


# ---------------------------------------------------------------- a really installed plugin


def _cli(*args, env_extra=None):
    env = {k: v for k, v in os.environ.items() if k != plugins.DISABLE_ENV}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "her2kit", *args], capture_output=True, text=True,
                          env=env, timeout=120)


def test_plugins_json_lists_every_kind():
    done = _cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    rows = json.loads(done.stdout)
    assert {r["kind"] for r in rows} == set(hookspecs.KINDS)
    for row in rows:
        assert set(row) >= {"kind", "name", "origin"}
    assert {"kind": "reader", "name": "tifffile", "origin": "builtin"} in [
        {k: r[k] for k in ("kind", "name", "origin")} for r in rows]


@needs_openslide_plugin
def test_openslide_plugin_discovered_through_its_entry_point():
    done = _cli("plugins", "--json")
    assert done.returncode == 0, done.stderr
    rows = [{k: r[k] for k in ("kind", "name", "origin")} for r in json.loads(done.stdout)]
    assert {"kind": "reader", "name": "openslide", "origin": OPENSLIDE_DIST} in rows
    off = _cli("plugins", "--json", env_extra={plugins.DISABLE_ENV: "1"})
    assert "openslide" not in {r["name"] for r in json.loads(off.stdout)}


@needs_openslide_plugin
def test_openslide_plugin_reads_what_tifffile_reads(svs_file, rgb, monkeypatch):
    from her2kit.readers import open_slide

    monkeypatch.setattr("her2kit_openslide.slide.TILE", 128)  # several dask chunks per level
    plugins.reset()
    try:
        auto = open_slide(svs_file)  # the plugin outranks the built-in for .svs
        assert type(auto).__name__ == "OpenSlideSlide"
        via_plugin = open_slide(svs_file, reader="openslide")
        via_tifffile = open_slide(svs_file, reader="tifffile")
        assert via_plugin.level_count == via_tifffile.level_count == 2
        assert via_plugin.mpp == pytest.approx(0.252) and via_tifffile.mpp == pytest.approx(0.252)
        for level in range(2):
            assert via_plugin.level_shape(level) == via_tifffile.level_shape(level)
            for y, x, h, w in [(0, 0, *via_plugin.level_shape(level)), (-7, -9, 50, 60), (100, 300, 90, 90)]:
                a = via_plugin.read_region(y, x, h, w, level)
                assert a.dtype == np.uint8 and a.shape == (h, w, 3)
                np.testing.assert_array_equal(a, via_tifffile.read_region(y, x, h, w, level))
            lazy = via_plugin.to_dask(level)
            assert len(lazy.chunks[1]) > 1 and lazy.dtype == np.uint8
            np.testing.assert_array_equal(lazy.compute(), via_tifffile.to_dask(level).compute())
        np.testing.assert_array_equal(via_plugin.read_region(0, 0, 300, 380), rgb)
    finally:
        plugins.reset()


@needs_openslide_plugin
def test_openslide_plugin_bad_input_is_one_line(tmp_path):
    from her2kit.readers import open_slide

    for name, content in [("text.svs", b"not a slide\n"), ("empty.ndpi", b""), ("text.mrxs", b"x")]:
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(InputError) as info:
            open_slide(path)
        assert str(path) in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------- start-up stays light


def test_discovery_and_help_do_not_import_heavy_modules():
    code = (
        "import sys, her2kit.cli\n"
        "her2kit.cli.build_parser().format_help()\n"
        "from her2kit.plugins import registry\n"
        "assert len(registry().list()) >= 4\n"
        "heavy = [m for m in ('torch', 'dask', 'skimage', 'openslide', 'zarr', 'tifffile') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_help_imports_no_torch():
    """`her2kit --help` itself, with -X importtime listing every module it imported."""
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "her2kit", "--help"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "plugins" in done.stdout
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if "|" in line}
    assert "her2kit.cli" in imported  # the listing is real
    assert not {m for m in imported if m.split(".")[0] in ("torch", "dask", "openslide")}


def test_threads_loading_the_plugins_at_once_all_see_every_reader():
    """A dask worker's threads open slides at once in a fresh process: the one
    that loads the plugins must not let the others see an empty registry
    (they failed with "not an image or a Zarr store")."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    def readers(registry, start):
        start.wait()
        return sorted(e.name for e in registry.list("reader"))

    expected = sorted(e.name for e in Registry().list("reader"))
    for _ in range(5):
        registry, start = Registry(), threading.Barrier(8)
        with ThreadPoolExecutor(8) as pool:
            seen = list(pool.map(lambda _: readers(registry, start), range(8)))  # noqa: B023
        assert seen == [expected] * 8


def test_cli_says_a_broken_plugin_in_one_line(tmp_path):
    """QA: a plugin that raised on import printed Python's two-line warning (with
    her2kit's source line) before every command."""
    info = tmp_path / "qa_broken-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: qa-broken\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[her2kit]\nbroken = qa_broken_mod\n")
    (tmp_path / "qa_broken_mod.py").write_text("raise RuntimeError('this plugin is broken')\n")
    env = {k: v for k, v in os.environ.items() if k != plugins.DISABLE_ENV}
    env["PYTHONPATH"] = str(tmp_path)
    p = subprocess.run([sys.executable, "-m", "her2kit", "plugins"], capture_output=True, text=True,
                       env=env, timeout=120)
    assert p.returncode == 0 and "her2net" in p.stdout
    assert p.stderr.strip().splitlines() == [
        "her2kit: warning: her2kit plugin 'broken' from qa-broken failed to load: "
        "RuntimeError: this plugin is broken"], p.stderr


def test_plugins_command_lists_both_claimants_of_a_name(monkeypatch, capsys):
    """QA: with two plugins claiming one name, `her2kit plugins` (the command to
    diagnose that) failed and listed nothing."""
    from her2kit import cli

    class Clash:
        @hookimpl
        def her2kit_models(self):
            return [hookspecs.ModelSpec("unet", "my own unet", _factory)]

    reg = _registry_with((Clash(), "clash-dist"))
    monkeypatch.setattr(plugins, "_registry", reg)
    assert cli.main(["plugins"]) == 1
    out, err = capsys.readouterr()
    assert "my own unet" in out and "U-Net baseline" in out and "her2net" in out
    assert err.count("her2kit: error: model 'unet' is claimed by two plugins") == 1
    with pytest.raises(PluginError, match="claimed by two plugins"):
        reg.get("model", "her2net")  # every other command still stops on the clash
