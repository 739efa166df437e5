"""The typed configuration: defaults as published, TOML loading, overrides, errors."""

from __future__ import annotations

import pytest

from selfinstruct.config import Config, ConfigError, load_config


def test_defaults_are_the_papers():
    config = Config()
    assert config.generation.prompt_tasks == 8 and config.generation.prompt_human_tasks == 6
    assert config.generation.temperature == 0.7 and config.generation.top_p == 0.5
    assert config.generation.max_list_items == 15
    assert config.filters.rouge_threshold == 0.7
    assert (config.filters.min_words, config.filters.max_words) == (4, 150)
    assert "go to" in config.filters.blacklist
    assert config.instances.max_instances == 5


def test_sampling_defaults_are_the_reference_implementations():
    config = Config()
    assert (config.generation.presence_penalty, config.generation.max_tokens) == (2.0, 1024)
    assert config.generation.stop == ["\n\n"]
    assert (config.instances.presence_penalty, config.instances.temperature) == (1.5, 0.0)
    assert (config.instances.max_tokens, config.instances.output_first_max_tokens) == (350, 300)
    assert Config().generation.stop is not config.generation.stop  # a fresh list per config


def test_toml_then_overrides(tmp_path):
    path = tmp_path / "run.toml"
    path.write_text('num_instructions = 20\n[generation]\ntemperature = 0.9\n'
                    '[filters]\nrouge_threshold = 0.5\n')
    config = load_config(path, {"generation.temperature": 0.2, "seed": None})
    assert config.num_instructions == 20
    assert config.generation.temperature == 0.2
    assert config.filters.rouge_threshold == 0.5
    assert config.seed == 0


@pytest.mark.parametrize("text, expected", [
    ('num_instructions = 5\n[generation]\ntemprature = 0.9\n',
     "run.toml:3: field 'generation.temprature': unknown key"),
    ('[filters]\n\nrouge_threshold = "high"\n', "run.toml:3: field 'filters.rouge_threshold'"),
    ('num_instructions = 0\n', "run.toml:1: field 'num_instructions'"),
    ('[generation]\nprompt_tasks = 4\nprompt_human_tasks = 6\n',
     "field 'generation': Value error, prompt_human_tasks must not exceed"),
    ('model = \n', "run.toml: invalid TOML"),
])
def test_bad_toml_names_file_line_and_field(tmp_path, text, expected):
    path = tmp_path / "run.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_bad_override_names_the_option():
    with pytest.raises(ConfigError, match="option --top-p: "):
        load_config(None, {"generation.top_p": 0.0}, {"generation.top_p": "--top-p"})


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml")
