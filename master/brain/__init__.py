"""The master's brain: pure state, events in, commands out; no sockets, no clock, no disk.

`state.MasterState.handle(event, now)` is the one entry point; `events` names what it takes and
what it asks for, `transitions` the moves shards and jobs may make, `model` the records, and
`scheduling`, `failures` and `views` the policies and read-outs it uses.
"""
