"""``python -m segx_monai.report <interpret_dir>``: rebuild the report of an interpretation folder."""

from segx_monai.report.interpretation import main

raise SystemExit(main())
