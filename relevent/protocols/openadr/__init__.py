"""OpenADR 2.0b VEN (WAN): the site registers with a VTN, polls, follows its events as schedules, opts in
or out and reports measured power (docs/openadr.md)."""
