"""Config loading: inheritance, overrides, per-layer resolution and every bad-input message."""

from pathlib import Path

import pytest

from train.config import ConfigError, load_config, parse_size, to_toml

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def tiny(tmp_path: Path, extra: str = "", name: str = "x.toml") -> Path:
    """A small config (8 layers so selectors have room) with extra TOML appended."""
    base = write(tmp_path, "small.toml", "[model]\nn_layer = 8\nn_head = 4\nd_model = 64\n")
    return write(tmp_path, name, f'base = "{base.name}"\n{extra}')


# --- the shipped configs ------------------------------------------------------------------------


RUN_CONFIGS = sorted([*CONFIGS.glob("*.toml"), *(CONFIGS / "tiny").glob("*.toml")])  # suites/ are not run configs


@pytest.mark.parametrize("path", RUN_CONFIGS, ids=lambda p: str(p.relative_to(CONFIGS)))
def test_every_shipped_config_loads(path):
    cfg = load_config(path)
    assert len(cfg.model.layer_specs) == cfg.model.n_layer


def test_tiny_twins_exist_for_every_study_config():
    study = {p.name for p in CONFIGS.glob("*.toml") if not p.name.startswith("rope_features_")}
    tiny_set = {p.name for p in (CONFIGS / "tiny").glob("*.toml") if not p.name.startswith("rope_features_")}
    assert study == tiny_set


def test_study_baseline_is_the_papers_model():
    cfg = load_config(CONFIGS / "baseline.toml")
    m = cfg.model
    assert (m.d_model, m.n_layer, m.n_head, m.head_dim) == (768, 12, 12, 64)
    assert m.layer_specs[0].rope_features == 16 and m.layer_specs[0].rope_on == "qk"
    assert cfg.train.tokens == 500_000_000 and cfg.lossdb.segment_tokens == 50_000_000


def test_inheritance_states_only_differences():
    cfg = load_config(CONFIGS / "shift_mult_sigmoid.toml")  # -> shift_384_384 -> baseline
    spec = cfg.model.layer_specs[0]
    assert spec.shift == (384, 384) and spec.shift_offsets == (1, 0)
    assert spec.shift_combine == "mult" and spec.shift_sigmoid
    assert cfg.model.d_model == 768 and cfg.name == "shift_mult_sigmoid"


def test_resolved_toml_round_trips(tmp_path):
    cfg = load_config(CONFIGS / "shift_every2.toml", ["model.n_layer=6"])
    again = load_config(write(tmp_path, "resolved.toml", to_toml(cfg)))
    assert again.model == cfg.model and again.train == cfg.train and again.optim == cfg.optim


# --- overrides -----------------------------------------------------------------------------------


def test_overrides_go_through_the_same_checks(tmp_path):
    cfg = load_config(CONFIGS / "baseline.toml", ["model.shift=[384,384]", "model.pos=alibi", "train.tokens=2M"])
    assert cfg.model.layer_specs[3].shift == (384, 384)
    assert cfg.model.pos == "alibi" and cfg.train.tokens == 2_000_000
    with pytest.raises(ConfigError, match=r"^--set: model.shift = \[384, 300\]: widths sum to 684, not model.d_model = 768$"):
        load_config(CONFIGS / "baseline.toml", ["model.shift=[384,300]"])
    with pytest.raises(ConfigError, match=r"--set model.n_layer: expected table.key=value"):
        load_config(CONFIGS / "baseline.toml", ["model.n_layer"])
    with pytest.raises(ConfigError, match=r"--set modle.n_layer=3: modle: unknown table"):
        load_config(CONFIGS / "baseline.toml", ["modle.n_layer=3"])


def test_size_suffixes():
    assert parse_size("500M") == 500_000_000 and parse_size("1.5K") == 1500 and parse_size(7) == 7
    with pytest.raises(ValueError):
        parse_size("lots")


# --- per-layer resolution ---------------------------------------------------------------------


def shifted_layers(cfg):
    return [i for i, spec in enumerate(cfg.model.layer_specs) if spec.shifts]


@pytest.mark.parametrize(
    "selector, expected",
    [
        ("every = 2", [0, 2, 4, 6]),
        ("every = 3\noffset = 1", [1, 4, 7]),
        ('range = "2:5"', [2, 3, 4]),
        ('range = ":3"', [0, 1, 2]),
        ("layers = [0, 5]", [0, 5]),
        ('half = "first"', [0, 1, 2, 3]),
        ('half = "last"', [4, 5, 6, 7]),
    ],
)
def test_layer_selectors(tmp_path, selector, expected):
    cfg = load_config(tiny(tmp_path, f"[[model.layers]]\n{selector}\nshift = [32, 32]\n"))
    assert shifted_layers(cfg) == expected


def test_later_layer_tables_win_and_override_any_setting(tmp_path):
    cfg = load_config(tiny(tmp_path, (
        "[model]\nshift = [32, 32]\n"
        '[[model.layers]]\nhalf = "last"\npos = "alibi"\nffn_mult = 2.0\nshift = []\n'
        "[[model.layers]]\nlayers = [7]\nrope_features = 0.5\npos = \"rope\"\nrope_on = \"vo\"\n"
    )))
    specs = cfg.model.layer_specs
    assert shifted_layers(cfg) == [0, 1, 2, 3]
    assert [s.pos for s in specs] == ["rope"] * 4 + ["alibi"] * 3 + ["rope"]
    assert specs[5].ffn_mult == 2.0 and specs[0].ffn_mult == 4.0
    assert specs[7].rope_features == 8 and specs[7].rope_on == "vo" and specs[6].rope_features == 4


def test_learned_positions_leave_blocks_without_encoding(tmp_path):
    cfg = load_config(tiny(tmp_path, '[model]\npos = "learned"\n'))
    assert {s.pos for s in cfg.model.layer_specs} == {"none"}


# --- bad input: one line naming file, key and value ---------------------------------------------


@pytest.mark.parametrize(
    "extra, message",
    [
        ("[model]\nn_layrs = 4\n", r"x.toml: model.n_layrs = 4: unknown key \(known: vocab_size"),
        ('[model]\nn_layer = "four"\n', r'x.toml: model.n_layer = "four": expected an integer'),
        ("[model]\nn_layer = 2.5\n", r"x.toml: model.n_layer = 2.5: expected an integer"),
        ("[model]\ntie_embeddings = 1\n", r"x.toml: model.tie_embeddings = 1: expected true or false"),
        ('[model]\npos = "sinusoid"\n', r'x.toml: model.pos = "sinusoid": expected one of rope, alibi, learned, none'),
        ("[model]\nd_model = 66\n", r"x.toml: model.d_model = 66: not divisible by model.n_head = 4"),
        ("[model]\nshift = [32, 16]\n", r"x.toml: model.shift = \[32, 16\]: widths sum to 48, not model.d_model = 64"),
        ('[model]\nshift = [100, 100]\nshift_location = "ffn_inner"\n',
         r"x.toml: model.shift = \[100, 100\]: widths sum to 200, not the FFN's inner width 256"),
        ("[model]\nshift = [32, 32]\nshift_offsets = [1]\n", r"model.shift_offsets = \[1\]: needs one offset per width"),
        ("[model]\nrope_features = 32\n", r"x.toml: model.rope_features = 32: rotates 32 features but a head has 16"),
        ("[model]\nrope_features = 5\n", r"x.toml: model.rope_features = 5: rotates 5 features: RoPE needs an even number"),
        ("[model]\nrope_features = 1.5\n", r"model.rope_features = 1.5: a fraction must be in \(0, 1\]"),
        ('[[model.layers]]\nrange = "4:9"\nshift = [32, 32]\n', r'x.toml: model.layers\[0\].range = "4:9": out of range for model.n_layer = 8'),
        ("[[model.layers]]\nlayers = [1, 8]\n", r"x.toml: model.layers\[0\].layers = \[1, 8\]: layer 8 out of range"),
        ("[[model.layers]]\nevery = 0\n", r"x.toml: model.layers\[0\].every = 0: expected a positive integer"),
        ("[[model.layers]]\nshift = [32, 32]\n", r"x.toml: model.layers\[0\] = .*: state exactly one selector"),
        ("[[model.layers]]\nevery = 2\nshfit = [32, 32]\n", r"x.toml: model.layers\[0\].shfit = \[32, 32\]: unknown key"),
        ('[[model.layers]]\nevery = 2\npos = "learned"\n', r"model.layers\[0\].pos = \"learned\": learned positions are model-wide"),
        ("[[model.layers]]\nevery = 2\nshift = [32, 31]\n", r"x.toml: model.layers\[0\].shift = \[32, 31\]: widths sum to 63"),
        ("[train]\nbatch_size = 10\nmicro_batch_size = 4\n", r"x.toml: train.batch_size = 10: not a multiple of train.micro_batch_size = 4"),
        ("[optim]\nwarmup_frac = 1.5\n", r"x.toml: optim.warmup_frac = 1.5: must be in \[0, 1\)"),
        ("[trian]\nseed = 1\n", r"x.toml: trian: unknown table"),
        ("[model\n", r"x.toml: not valid TOML"),
    ],
)
def test_bad_input_names_file_key_and_value(tmp_path, extra, message):
    path = tiny(tmp_path, extra)
    with pytest.raises(ConfigError, match=message) as err:
        load_config(path)
    assert "\n" not in str(err.value)


def test_error_names_the_file_that_set_the_key(tmp_path):
    write(tmp_path, "parent.toml", "[model]\nn_head = 5\n")
    child = write(tmp_path, "child.toml", 'base = "parent.toml"\n[model]\nd_model = 64\n')
    with pytest.raises(ConfigError, match=r"child.toml: model.d_model = 64: not divisible by model.n_head = 5"):
        load_config(child)


def test_inheritance_cycle(tmp_path):
    write(tmp_path, "a.toml", 'base = "b.toml"\n')
    write(tmp_path, "b.toml", 'base = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"base: inheritance cycle: .*a.toml -> .*b.toml -> .*a.toml"):
        load_config(tmp_path / "a.toml")


def test_missing_base_file(tmp_path):
    path = write(tmp_path, "a.toml", 'base = "nowhere.toml"\n')
    with pytest.raises(ConfigError, match=r"a.toml: base: file not found: .*nowhere.toml"):
        load_config(path)


# --- docs ------------------------------------------------------------------------------------------


def test_config_reference_is_generated_and_current():
    from train.config import TABLES, field_docs, reference_markdown

    for table, cls in TABLES.items():
        import dataclasses

        undocumented = [f.name for f in dataclasses.fields(cls) if f.name not in field_docs(cls)]
        assert not undocumented, f"[{table}] fields without a #: doc line: {undocumented}"
    on_disk = (CONFIGS.parent / "docs" / "config.md").read_text()
    assert on_disk == reference_markdown(), "docs/config.md is stale: python cli.py model reference --out docs/config.md"
