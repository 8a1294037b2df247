"""What a user sees of jobs beyond the CLI tables: timelines, reports, traces, the dashboard."""
