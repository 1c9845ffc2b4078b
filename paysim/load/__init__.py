"""The load engine: open-model schedules, scenarios, thresholds and run reports."""
