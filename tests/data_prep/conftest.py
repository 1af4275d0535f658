import pytest

from tests.data_prep.corpora import make_tokenizer


@pytest.fixture(scope="session")
def tokenizer(tmp_path_factory):
    """A small BPE tokenizer trained on the bundled corpus (shared by the data tests)."""
    return make_tokenizer(tmp_path_factory.mktemp("tokenizer"))
