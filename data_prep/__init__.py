"""Corpus preparation: tokenizers and webdataset shards (installed as ``megatron_ttt.data_prep``)."""
