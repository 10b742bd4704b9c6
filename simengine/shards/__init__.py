"""Embeddings as files: a collection's vectors written in shards (clip-retrieval's layout), on this machine or on a
Ray cluster, resumable shard by shard."""
