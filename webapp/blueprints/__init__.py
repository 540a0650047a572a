"""The site's routes: HTML pages, the RSS feed, and the JSON API."""
