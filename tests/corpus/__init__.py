"""Hostile-input machinery: the malformed-input corpus (``make_corpus``), the fuzz seeds
(``seeds``), the builders of small valid inputs they start from (``builders``), the
resource-limited batch runner (``runner``) and the child that pauses mid-write for the fault tests
(``pause_child``).

Other formats contribute through modules ``tests/hostile_<name>.py`` that expose either or both of

    def corpus_cases() -> list[corpus.make_corpus.Case]     # malformed inputs + the error each gives
    def fuzz_seeds() -> list[corpus.seeds.Seed]             # valid small inputs to mutate

``corpus.make_corpus.collect_cases()`` and ``corpus.seeds.collect_seeds()`` import every such module,
so adding a format is a few table entries there, e.g.::

    # tests/hostile_gguf.py
    from corpus.make_corpus import Case
    from corpus.seeds import Seed

    def corpus_cases():
        return [Case("gguf", "bad_magic", lambda d: write(d + "/m.gguf", b"GGUX" + ...),
                     "not a GGUF file", read_args=("--from", "gguf"))]

    def fuzz_seeds():
        # (path to read, file to mutate); int_fields: (offset, size) of header integers
        return [Seed("gguf", "tiny", lambda d: (p := tiny_gguf(d), p),
                     int_fields=lambda data: [(4, 4), (8, 8), (16, 8)])]

Every registered readable format must have at least one seed (``test_fuzz`` fails otherwise);
every writable one is covered by ``test_determinism`` without any entry.
"""
