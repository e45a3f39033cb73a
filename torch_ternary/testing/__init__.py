"""Models that tests, docs examples, demos and benchmarks build offline: FLUX transformer configs
(:mod:`.flux`: FLUX.1-dev's real config, tiny and small ones, random-weight builders, example inputs)
and whole diffusers ``FluxPipeline`` objects from configs with word-level tokenizers (:mod:`.pipelines`).
Nothing here downloads anything; both need the ``diffusers`` extra when called."""
