"""The `minimaskrcnn` command line (the outermost layer: nothing imports it).

Modules, in reading order:
    main.py       the parser built from the subcommand modules, dispatch, one-line errors, --threads
    options.py    the parser class, option validators and the option groups every subcommand shares
    steps.py      shared steps: load the model (with a --classes check), the detector, output folder, summary
    segment.py    `segment` and `video` (frame by frame): their options, the video loop
    collection.py `segment`'s run over a collection: in this process or on a Dask cluster, journal and --resume
    study.py      `trace`, `compare`, `explain`: looking inside the network
    tools.py      `demo` (the built-in model, offline) and `bench` (speed against the peers)
    crosscheck.py `crosscheck`: an ONNX export checked stage by stage
    progress.py   the progress bar
"""
