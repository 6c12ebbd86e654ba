"""A sweep's result.json files -> the report: tables, statistics, plots and report.html (reads only through contracts/)."""
