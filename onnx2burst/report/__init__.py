"""Tables (rich) and plots (matplotlib) of evaluation and search results; both imported when used."""
