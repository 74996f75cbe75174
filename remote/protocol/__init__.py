"""What host and container say to each other, in one place; imported on both sides.

Only the standard library, numpy, msgpack and gymnasium are imported here: the server in
the container, on the image's own Python, imports this package and nothing of the host's.

* :mod:`.codec`: values as msgpack, numpy arrays as raw buffers, nothing ever unpickled;
* :mod:`.channel`: frames on a socket, the env stream for reset/step;
* :mod:`.ops`: the protocol itself: its version, the hello, every request and its reply
  (with their sizes and status codes), errors as plain data and back;
* :mod:`.spaces`: gymnasium spaces as plain data;
* :mod:`.rundir`: the files of a run folder (config, secret, ready) both sides read;
* :mod:`.runlog`: the experiment log the container writes and the host reads;
* :mod:`.loop`: the experiment loop, its log and checkpoints, run in the container for an
  agent there and on the host for an agent object;
* :mod:`.recording`: the raw frames of a recorded episode, which the host encodes to MP4.
"""
