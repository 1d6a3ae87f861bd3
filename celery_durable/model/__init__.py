"""The shared vocabulary every layer speaks: records, the cursor, waits. Plain types only."""
