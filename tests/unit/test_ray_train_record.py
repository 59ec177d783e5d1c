"""A Ray Train run record cut short by a kill is set aside, so the rerun starts instead of failing."""

import json

from raysys.ray.train import RUN_RECORD, set_aside_unreadable_record


def test_an_unreadable_run_record_is_set_aside_and_a_readable_one_kept(tmp_path, capsys):
    run = tmp_path / "classifier-abc"
    run.mkdir()
    record = run / RUN_RECORD
    assert not set_aside_unreadable_record(str(tmp_path), "classifier-abc")  # no record: a first run

    good = json.dumps({"checkpoint_results": [], "current_report_index": 3})
    record.write_text(good)
    assert not set_aside_unreadable_record(str(tmp_path), "classifier-abc")
    assert record.read_text() == good

    for cut in ("", good[:17], "\xff\xfe"):  # empty, cut mid-write, not text
        record.write_bytes(cut.encode("latin-1"))
        assert set_aside_unreadable_record(str(tmp_path), "classifier-abc")
        assert not record.exists()
        aside = sorted(run.glob(RUN_RECORD + ".unreadable-*"))
        assert len(aside) == 1 and aside[0].read_bytes() == cut.encode("latin-1")  # kept, not deleted
        aside[0].unlink()
    assert "starts again from its first epoch" in capsys.readouterr().out
