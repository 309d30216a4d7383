# Keys the module renders that today's hive-core does not yet accept, each
# with the issue it waits for. The test strips them before handing the
# rendered config to `hive-core check-config`, then adds each back alone and
# checks that the core's refusal names it; when the core learns a key, the
# test prints that it can leave this list. A key the core refuses that is not
# listed here fails the test: that is drift between module and parser.
[
]
