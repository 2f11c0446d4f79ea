"""tests/matterport_oracle.py: a missing oracle environment is a test failure with the reason, never a skip."""
import pytest

import matterport_oracle


def test_an_environment_that_cannot_be_built_fails(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIMASKRCNN_ORACLE_DIR", str(tmp_path / "env"))
    monkeypatch.setenv("MINIMASKRCNN_PY37", str(tmp_path / "no-python3.7"))
    with pytest.raises(pytest.fail.Exception, match="no Python 3.7 at .*no-python3.7"):
        matterport_oracle.ensure_env()


def test_a_half_built_environment_is_not_taken_for_a_built_one(tmp_path, monkeypatch):
    venv = tmp_path / "env"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")            # an interrupted build: no completion marker
    monkeypatch.setenv("MINIMASKRCNN_ORACLE_DIR", str(venv))
    monkeypatch.setenv("MINIMASKRCNN_PY37", str(tmp_path / "no-python3.7"))
    with pytest.raises(pytest.fail.Exception, match="no Python 3.7"):
        matterport_oracle.ensure_env()


def test_cache_keys_follow_the_script_and_its_parameters():
    a = matterport_oracle.cache_key("mrcnn_config_values.py", {"cases": [{}]})
    assert a == matterport_oracle.cache_key("mrcnn_config_values.py", {"cases": [{}]})
    assert a != matterport_oracle.cache_key("mrcnn_config_values.py", {"cases": [{}, {}]})
    assert a != matterport_oracle.cache_key("mrcnn_save_weights.py", {"cases": [{}]})
