"""What a manifest says of the tokenizer its shards were made with, where it is read again."""

import shutil
from dataclasses import replace

from megatron_ttt.data import Manifest


def with_tokenizer_at(manifest: Manifest, path) -> Manifest:
    return replace(manifest, settings=replace(manifest.settings,
                                              tokenizer=replace(manifest.settings.tokenizer, path=str(path))))


def test_a_missing_or_changed_tokenizer_is_named(manifest, tmp_path):
    assert manifest.tokenizer_problem() is None
    copy = tmp_path / "copy.model"
    shutil.copyfile(manifest.settings.tokenizer.path, copy)
    assert with_tokenizer_at(manifest, copy).tokenizer_problem() is None
    assert with_tokenizer_at(manifest, tmp_path / "gone.model").tokenizer_problem() == (
        f"names the tokenizer {tmp_path / 'gone.model'}, which does not exist here")
    copy.write_bytes(copy.read_bytes() + b"\0")
    assert with_tokenizer_at(manifest, copy).tokenizer_problem() == (
        f"names the tokenizer {copy}, which differs from the one its shards were made with (sha256)")
