"""The files lungbench's parts exchange and the rules for writing them: the catalog of classes
and backbones, folder ownership, locks and atomic writes, and one module per file contract
(dataset.json, result.json, sweep.json, predictions.json) with its name, schema, writer and
reader. Imported by converters, benchmark, reports and perf; imports none of them."""
