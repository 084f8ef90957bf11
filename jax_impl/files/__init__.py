"""Files written safely and read defensively: atomic writes, the output folder's lock, artifact sets committed
as one unit, the JSON reader and the .xlsx writer."""
