"""Day-2 operations on a running deployment: dead letters and replay.

    dlq.py       reading dead-letter records back; `tagstream-worker dlq stats`
    redrive.py   `tagstream-worker dlq redrive`: re-publish dead letters once their cause is
                 fixed (resumable, in a consumer group of its own)
    rewind.py    `tagstream-worker rewind`: move the worker group's committed offsets back to a
                 time, e.g. to re-classify a day of traffic after a model update
    kafka.py     clients built from the worker's settings; Kafka errors translated once
    timespec.py  the command line's times (ISO 8601) and durations (90m, 24h, 7d)
    errors.py    UsageError, GroupActiveError
    cli.py       the argparse registration of those commands

Every command reads the worker's own settings (TAGSTREAM_* variables or --config), so it talks
to the same brokers, with the same credentials, group and input parsing as the workers.
"""
