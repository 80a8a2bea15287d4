"""Hostile-input machinery: the malformed-input corpus (``make_corpus``), the fuzz seeds
(``seeds``), the builders of small valid inputs they start from (``builders``) and the
resource-limited batch runner (``runner``).

Other formats contribute through modules ``tests/hostile_<name>.py`` that expose either or both of

    def corpus_cases() -> list[corpus.make_corpus.Case]     # malformed inputs + the error each gives
    def fuzz_seeds() -> list[corpus.seeds.Seed]             # valid small inputs to mutate

``corpus.make_corpus.collect_cases()`` and ``corpus.seeds.collect_seeds()`` import every such module.
"""
