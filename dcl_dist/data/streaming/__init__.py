"""Training data as a stream: Hugging Face datasets streaming over local files or hub datasets, sharded by rank,
through a seeded shuffle buffer whose whole state is ours, so that a checkpoint taken after any micro-batch
resumes with exactly the micro-batches the uninterrupted run would have seen, without replaying the stream
(Hugging Face re-reads only the current file up to the position).

Per rank, a stream is an endless sequence of passes over the rank's share of its sources (train, then each of
data.unlabelled in phase dae). A pass reads every record once (phases cl and joint emit the imbalance
correction's copies of each), mixes them through a buffer of data.shuffle_buffer_size examples and drains the
buffer at the pass's end. The buffer's random draws are keyed on (seed, rank, pass, draw number), so its state
is its content and a counter. The loop's epochs are windows of steps_per_epoch steps over that sequence.

The package reads by concept: reading (opening sources, this rank's share, bad records), counting (the labels and
sizes of the stream, cached), rank_stream (the shuffle buffer and its exact state) and feed (the phase's batches).
"""

from dcl_dist.data.streaming.counting import TrainStream, describe_stream
from dcl_dist.data.streaming.feed import StreamFeed
from dcl_dist.data.streaming.rank_stream import RankStream

__all__ = ["RankStream", "StreamFeed", "TrainStream", "describe_stream"]
