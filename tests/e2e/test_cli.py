"""The `rlhf` command as a user runs it: prepare on the default, errors, --cfg job."""

import gzip
import json

import yaml

from tests.conftest import EXAMPLES, ROOT

HH = EXAMPLES / "hh_rlhf.jsonl"
TIMEOUT = 300


def test_prepare_on_the_default_writes_run_dir_and_prints_summary(tmp_path, run_cli):
    out = run_cli("data.toy.num_prompts=400", "run=t", cwd=tmp_path, timeout=TIMEOUT)
    assert "data: toy" in out.stdout and "response tokens" in out.stdout
    stage_dir = tmp_path / "runs" / "t" / "prepare"
    config = yaml.safe_load((stage_dir / "config.yaml").read_text())
    assert config["data"]["toy"]["num_prompts"] == 400 and config["stage"]["name"] == "prepare"
    manifest = json.loads((stage_dir / "manifest.json").read_text())
    assert manifest["status"] == "completed"
    assert sum(s["prompts"] for s in manifest["data"]["splits"].values()) == 400
    assert manifest["metrics"]["records"] == 800 and manifest["metrics"]["skipped"] == 0
    assert manifest["versions"]["torch"] and manifest["versions"]["transformers"]
    assert "commit" in manifest["git"]
    assert not list(tmp_path.glob("outputs"))  # no timestamped Hydra folders


def test_every_point_of_a_sweep_writes_its_own_folder_named_by_what_the_sweep_varies(tmp_path, run_cli):
    run_cli("-m", "stage=prepare", "run=s", "seed=0,1", "data.toy.num_prompts=200", "prepare.examples_per_split=0",
            cwd=tmp_path, timeout=TIMEOUT)
    run_dir = tmp_path / "runs" / "s"
    assert sorted(p.name for p in run_dir.glob("prepare*")) == ["prepare@seed=0", "prepare@seed=1"]
    for seed in (0, 1):
        config = yaml.safe_load((run_dir / f"prepare@seed={seed}" / "config.yaml").read_text())
        assert config["seed"] == seed and config["variant"] == f"seed={seed}"
    # one command, no sweep: the stage's own folder, as before
    run_cli("stage=prepare", "run=s", "data.toy.num_prompts=200", cwd=tmp_path, timeout=TIMEOUT)
    assert (run_dir / "prepare" / "manifest.json").exists()


def test_cfg_job_prints_the_composed_config(tmp_path, run_cli):
    out = run_cli("--cfg", "job", "data=hh_rlhf", cwd=tmp_path, timeout=TIMEOUT)
    cfg = yaml.safe_load(out.stdout)
    assert cfg["data"]["format"] == "hh_rlhf" and cfg["stage"]["name"] == "prepare"
    assert not (tmp_path / "runs").exists()


def test_hh_file_with_one_corrupt_line_fails_naming_that_line(tmp_path, run_cli):
    lines = HH.read_text().splitlines()
    lines.insert(1, lines[0][:40])  # a truncated record on line 2
    bad = tmp_path / "hh.jsonl.gz"
    with gzip.open(bad, "wt") as f:
        f.write("\n".join(lines) + "\n")
    args = ("data=hh_rlhf", f"data.path={bad}", "data.splits.shared=[sft,rm,ppo,eval]",
            *(f"data.splits.{s}=1" for s in ("sft", "rm", "ppo", "eval")))
    out = run_cli(*args, cwd=tmp_path, expect=2, timeout=TIMEOUT)
    assert f"{bad} line 2: field '(line)': invalid JSON" in out.stdout + out.stderr
    assert "Traceback" not in out.stdout + out.stderr
    manifest = json.loads((tmp_path / "runs/default/prepare/manifest.json").read_text())
    assert manifest["status"] == "failed" and "line 2" in manifest["error"]

    out = run_cli(*args, "data.on_error=skip", cwd=tmp_path, timeout=TIMEOUT)
    manifest = json.loads((tmp_path / "runs/default/prepare/manifest.json").read_text())
    assert manifest["data"]["skipped"] == {"invalid_json": 1} and manifest["data"]["records_kept"] == 2
    assert "invalid_json" in out.stdout


def test_config_errors_exit_2_with_the_fields_named(tmp_path, run_cli):
    out = run_cli("data.splits.sft=0.9", cwd=tmp_path, expect=2, timeout=TIMEOUT)
    assert "data.splits" in out.stdout + out.stderr and "Traceback" not in out.stdout + out.stderr
    out = run_cli("data.nope=1", cwd=tmp_path, expect=1, timeout=TIMEOUT)
    assert "nope" in out.stderr


def test_runs_from_any_directory(tmp_path, run_cli):
    # conf/ is found beside the package, not relative to the working directory
    assert (ROOT / "conf" / "config.yaml").exists()
    out = run_cli("--cfg", "job", "run=elsewhere", cwd=tmp_path / "..", expect=0, timeout=TIMEOUT)
    job = yaml.safe_load(out.stdout)
    assert job["run"] == "elsewhere" and job["model"]["tiny"]["hidden_size"] == 128  # conf/ composed in full
    assert job["ppo"]["beta"] == 0.05  # the toy's recipe (conf/recipe/toy_tiny.yaml) found too


def test_broken_files_exit_2_with_one_line_naming_the_file(tmp_path, run_cli):
    from tests.unit.test_real_data import broken_files

    for name, path, text in broken_files(tmp_path)[:4]:  # encoding, not gzip, cut gzip, bad CSV
        out = run_cli("data=jsonl", "data.format=pairwise", f"data.path={path}", cwd=tmp_path, expect=2,
                      timeout=TIMEOUT)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if "ERROR" in line]
        assert len(errors) == 1 and str(path) in errors[0] and text in errors[0], (name, errors)
        assert "Traceback" not in out.stdout + out.stderr, name


def test_hh_file_as_published_loads_with_the_defaults(tmp_path, run_cli):
    # empty replies, a reply holding "\n\nAssistant:", a conversation longer than the prompt limit
    path = tmp_path / "hh.jsonl"
    lines = HH.read_text().splitlines()
    long_turns = "".join(f"\n\nHuman: question {i} {'q' * 60}\n\nAssistant: answer {i} {'a' * 60}" for i in range(30))
    extra = [{"chosen": "\n\nHuman: hi\n\nAssistant:", "rejected": "\n\nHuman: hi\n\nAssistant: hello"},
             {"chosen": "\n\nHuman: q\n\nAssistant: one\n\nAssistant: two", "rejected": "\n\nHuman: q\n\nAssistant: x"},
             {"chosen": long_turns + "\n\nHuman: last?\n\nAssistant: yes", "rejected": long_turns + "\n\nHuman: last?\n\nAssistant: no"}]
    path.write_text("\n".join(lines + [json.dumps(x) for x in extra]) + "\n")
    run_cli("data=hh_rlhf", f"data.path={path}", "data.splits.shared=[sft,rm,ppo,eval]",
            *(f"data.splits.{s}=1" for s in ("sft", "rm", "ppo", "eval")), cwd=tmp_path, timeout=TIMEOUT)
    data = json.loads((tmp_path / "runs/default/prepare/manifest.json").read_text())["data"]
    assert data["records_kept"] == len(lines) + 3 and data["skipped"] == {}
    assert data["truncated"] == {"prompt_turns_dropped": 1} and data["sources"]["hh_rlhf"]["empty_responses"] == 1


def test_prepare_summarises_a_comparisons_only_file_and_a_stage_needing_more_names_the_split(tmp_path, run_cli):
    """A file of ranked comparisons (what collect writes) and files of one or two records: prepare
    summarises each and exits 0; the error comes from the stage that needs an empty split."""
    def ranked_file(n: int):
        path = tmp_path / f"ranked{n}.jsonl"
        path.write_text("".join(json.dumps({"prompt": f"sort ascending: {i} 1 2", "responses": [
            {"text": f"1 2 {i}", "rank": 0}, {"text": f"2 1 {i}", "rank": 1}]}) + "\n" for i in range(n)))
        return path

    for n in (1, 2, 40):
        run_cli("stage=prepare", f"run=r{n}", "data=jsonl", "data.format=ranked", f"data.path={ranked_file(n)}",
                "data.demonstrations_from_comparisons=false", cwd=tmp_path, timeout=TIMEOUT)
        data = json.loads((tmp_path / f"runs/r{n}/prepare/manifest.json").read_text())["data"]
        assert data["records_kept"] == n and sum(s["comparisons"] for s in data["splits"].values()) == n
        assert sum(s["demonstrations"] for s in data["splits"].values()) == 0
    out = run_cli("stage=sft", "run=r40", "data=jsonl", "data.format=ranked", f"data.path={ranked_file(40)}",
                  "data.demonstrations_from_comparisons=false", cwd=tmp_path, expect=2, timeout=TIMEOUT)
    errors = [line for line in (out.stdout + out.stderr).splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "stage sft needs demonstrations in split 'sft'" in errors[0], errors
    assert "data.demonstrations_from_comparisons=true" in errors[0] and "Traceback" not in out.stdout + out.stderr
