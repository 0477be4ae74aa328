"""What a run tells the outside while it trains: rank 0's progress to the operator (progress),
the experiment trackers (tracking), and the pod's log kept in the output location (logship).
Each one costs a report when its sink is slow or down, never a step."""
