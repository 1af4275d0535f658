"""`mttt data verify`: every shard of a manifest hashed and compared with its recorded sha256."""

from tqdm import tqdm

from megatron_ttt.data import DataError, Manifest
from megatron_ttt.data.tokenizer import file_sha256


def verify_shards(manifest: Manifest, show_progress: bool = False) -> None:
    entries = [e for split in manifest.shards.values() for e in split]
    bad = []
    for entry in tqdm(entries, unit="shard", disable=not show_progress):
        path = manifest.directory / entry.path
        if not path.is_file():
            bad.append(f"{path} is missing")
        elif (digest := file_sha256(path)) != entry.sha256:
            bad.append(f"{path} has sha256 {digest[:12]}..., the manifest says {entry.sha256[:12]}...")
    if bad:
        raise DataError(f"{len(bad)} of {len(entries)} shards do not match the manifest:\n  " + "\n  ".join(bad))
