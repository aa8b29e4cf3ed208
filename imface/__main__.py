from imface.cli import main

raise SystemExit(main())
