"""``chat-bench``: load a running server or cluster over real TCP and measure it.

The parent process (``cli``) plans each scenario and runs it in ``--procs``
load processes (``worker``), which meet it at barriers (log in, then go, then
report). Every delivery is checked (``stats.DeliveryChecker``): a run with a
lost, repeated or reordered message is a failed run, however fast it was.
With several ``--ports`` (one per cluster node), one-to-one deliveries are also
reported per route, ``same`` port or ``cross`` (``model``), and ``--route``
chooses which of the two the load is made of.
"""
